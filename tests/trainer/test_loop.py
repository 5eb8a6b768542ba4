"""steps_per_execution="auto": the fused loop gives the logs and parameters of single steps."""

import jax
import numpy as np
import optax

import callbacks
import nnx
from trainer import Trainer
from trainer.data import ArrayData
from trainer.loop import FusionTuner
from trainer.plan import BatchPlan


class Net(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(params=0, dropout=1)
        self.l1 = nnx.Linear(4, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(jax.nn.relu(self.bn(self.l1(x)))))


class StepLogs(callbacks.Callback):
    """Takes each step's logs; fine to run after a fused block."""

    fusable_batch_hooks = True

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append((batch, logs))


class ReadsModel(callbacks.Callback):
    """A batch hook that needs the model at every step."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def on_train_batch_end(self, batch, logs=None):
        self.kernels.append(np.asarray(self.model.l1.kernel.value))


def _fit(spe, *extra, epochs=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8 * 24, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=8 * 24).astype(np.int32)
    record = StepLogs()
    trainer = Trainer(Net(), optax.adam(1e-2), metrics=("accuracy",), steps_per_execution=spe)
    history = trainer.fit(
        x, y, batch_size=8, epochs=epochs, validation_data=(x[:40], y[:40]), verbose=0,
        callbacks=[record, *extra],
    )
    return trainer, history, record


def _values(model):
    """The model's arrays (RNG keys as their key data)."""
    out = []
    for v in jax.tree.leaves(nnx.state(model)):
        out.append(np.asarray(jax.random.key_data(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) else v))
    return out


def test_auto_fuses_steps_and_matches_single_steps_bit_for_bit():
    single, h1, r1 = _fit(1)
    auto, ha, ra = _fit("auto")
    chosen = auto._tuner.chosen
    train_choices = [k for key, k in chosen.items() if key[0] == "train"]
    assert train_choices and train_choices[0] > 1  # 24 steps per epoch: fused after probing
    assert h1.history == ha.history  # epoch logs, validation included, exactly equal
    assert [b for b, _ in r1.logs] == [b for b, _ in ra.logs] == list(range(24)) * 3
    assert [logs for _, logs in r1.logs] == [logs for _, logs in ra.logs]
    for a, b in zip(_values(single.model), _values(auto.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_auto_keeps_single_steps_while_a_batch_hook_reads_the_model():
    reader = ReadsModel()
    trainer, _, _ = _fit("auto", reader, epochs=1)
    assert not [k for key, k in trainer._tuner.chosen.items() if key[0] == "train"]
    assert len(reader.kernels) == 24
    assert not all(np.array_equal(reader.kernels[0], k) for k in reader.kernels[1:])


def _plan(n, bs, kind="train"):
    return BatchPlan(ArrayData(None, n), kind, bs)


def test_fusion_tuner_picks_a_block_that_tiles_the_pass():
    tuner = FusionTuner(target_seconds=0.1, cap=256)
    assert tuner.choose(1e-4, _plan(256 * 8, 8)) == 256  # 1000 steps fit in 0.1 s: the cap
    assert tuner.choose(1e-4, _plan(250 * 8, 8)) == 250  # one block per epoch
    assert tuner.choose(1e-4, _plan(257 * 8, 8)) == 256  # one single step left over
    assert tuner.choose(1e-4, _plan(600 * 8, 8)) == 200  # 256 would leave 88 single steps
    assert tuner.choose(1e-4, _plan(600 * 8 + 3, 8)) == 200  # the partial batch runs alone
    assert tuner.choose(0.02, _plan(256 * 8, 8)) == 5  # 5 steps per 0.1 s (256 = 51 * 5 + 1)
    assert tuner.choose(1.0, _plan(256 * 8, 8)) == 1  # slow steps are not fused
