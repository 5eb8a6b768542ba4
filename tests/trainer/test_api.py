"""Trainer API corners: wrt, validation_steps / validation_freq, evaluate inside a fit's callback,
step overrides, pytree predictions, stop_training at a fused block's boundary."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import callbacks
import nnx
from trainer import Trainer


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-1.0], [0.5]], np.float32)).astype(np.float32)
    return x, y


class Adapted(nnx.Module):
    """A frozen kernel plus a low-rank update, as after LoRA surgery."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (3, 1)))
        self.lora_a = nnx.LoRAParam(jnp.full((3, 1), 0.1))
        self.lora_b = nnx.LoRAParam(jnp.ones((1, 1)))

    def __call__(self, x):
        return x @ (self.kernel.value + self.lora_a.value @ self.lora_b.value)


def test_wrt_trains_only_the_chosen_variables():
    x, y = _data()
    model = Adapted()
    kernel, a = np.asarray(model.kernel.value).copy(), np.asarray(model.lora_a.value).copy()
    hist = Trainer(model, optax.sgd(0.1), wrt=nnx.LoRAParam).fit(x, y, batch_size=8, epochs=3, verbose=0)
    np.testing.assert_array_equal(np.asarray(model.kernel.value), kernel)
    assert not np.array_equal(np.asarray(model.lora_a.value), a)
    assert hist.history["loss"][-1] < hist.history["loss"][0]


def test_validation_steps_and_validation_freq():
    x, y = _data(24)
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    seen = []

    class Val(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if "val_loss" in logs:
                seen.append((epoch, logs["val_loss"], self.trainer.evaluate(x[16:], y[16:], batch_size=4, steps=1, verbose=0)["loss"]))

    hist = Trainer(model, optax.sgd(0.05)).fit(
        x[:16], y[:16], batch_size=4, epochs=4, validation_data=(x[16:], y[16:]), validation_steps=1,
        validation_freq=2, callbacks=[Val()], verbose=0,
    )
    assert [e for e, _, _ in seen] == [1, 3]
    for _, val_loss, one_batch in seen:  # one validation batch: the first 4 rows
        assert val_loss == pytest.approx(one_batch, rel=1e-6)
    assert len(hist.history["val_loss"]) == 2 and len(hist.history["loss"]) == 4
    # evaluate inside the fit's callback left the fit's state alone
    plain = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    Trainer(plain, optax.sgd(0.05)).fit(x[:16], y[:16], batch_size=4, epochs=4, verbose=0)
    np.testing.assert_allclose(np.asarray(model.kernel.value), np.asarray(plain.kernel.value), rtol=1e-6)


class ManualSGD(Trainer):
    traces = 0

    def train_step(self, state, batch):
        ManualSGD.traces += 1
        ctx = self.context

        def loss_of(params):
            return self.compute_loss(ctx.merge(params, state.others), batch)

        (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        params = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
        state = self.update_metrics(state._replace(params=params), batch, loss, aux)
        return state, self.compute_logs(state)


def test_train_step_override_takes_full_control_and_is_compiled_once():
    x, y = _data(16)
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    kernel, bias = jnp.asarray(model.kernel.value), jnp.asarray(model.bias.value)
    ManualSGD.traces = 0
    trainer = ManualSGD(model, optax.adam(1.0))  # the override ignores the optimizer
    trainer.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert ManualSGD.traces == 1 and trainer.step == 4
    def mse(k, b, xb, yb):
        return jnp.mean((xb @ k + b - yb) ** 2)

    for i in (0, 8, 0, 8):  # two epochs, unshuffled
        gk, gb = jax.grad(mse, argnums=(0, 1))(kernel, bias, x[i : i + 8], y[i : i + 8])
        kernel, bias = kernel - 0.1 * gk, bias - 0.1 * gb
    np.testing.assert_allclose(np.asarray(model.kernel.value), np.asarray(kernel), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.bias.value), np.asarray(bias), rtol=1e-5, atol=1e-6)


class Probabilities(Trainer):
    def predict_step(self, state, batch):
        logits = super().predict_step(state, batch)
        return {"logits": logits, "probs": jax.nn.softmax(logits), "label": jnp.argmax(logits, -1)}


@pytest.mark.parametrize("spe", [1, 3])
def test_predict_step_override_and_pytree_outputs_one_row_per_example(spe):
    x = np.random.default_rng(1).normal(size=(33, 4)).astype(np.float32)
    model = nnx.Linear(4, 5, rngs=nnx.Rngs(0))
    out = Probabilities(model, optax.sgd(0.1), steps_per_execution=spe).predict(x, batch_size=8, verbose=0)
    assert set(out) == {"logits", "probs", "label"}
    assert out["logits"].shape == (33, 5) and out["probs"].shape == (33, 5) and out["label"].shape == (33,)
    expected = np.asarray(model(jnp.asarray(x)))
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["label"], expected.argmax(-1))


def test_stop_training_takes_effect_at_the_next_block_boundary():
    x, y = _data(48)

    class StopAt2(callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(batch)
            if batch == 1:
                self.trainer.stop_training = True

    stopper = StopAt2()
    t = Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.01), steps_per_execution=4)
    t.fit(x, y, batch_size=4, epochs=2, callbacks=[stopper], verbose=0)
    # the hooks of the first block of 4 run after it; the stop request ends the fit there
    assert t.step == 4 and stopper.ends == [0, 1, 2, 3]


class NormLogging(Trainer):
    def train_step(self, state, batch):
        old = state.params
        state, logs = super().train_step(state, batch)
        change = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), state.params, old)
        return state, {**logs, "update_norm": jnp.sqrt(sum(jax.tree.leaves(change))), "one": 1.0}


def test_scalars_a_custom_step_returns_are_averaged_over_the_epoch_and_logged(tmp_path):
    import callbacks

    x, y = _data(16)
    seen = []
    batch_logs = callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(logs))
    csv = callbacks.CSVLogger(tmp_path / "log.csv")
    trainer = NormLogging(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1), steps_per_execution=1)
    hist = trainer.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, validation_data=(x, y),
                       callbacks=[batch_logs, csv])
    assert hist.history["one"] == [1.0, 1.0] and len(hist.history["update_norm"]) == 2
    assert "val_update_norm" not in hist.history and "val_one" not in hist.history
    # the epoch value is the mean of the steps' values (batch logs are running means)
    assert hist.history["update_norm"][0] == pytest.approx(seen[3]["update_norm"], rel=1e-6)
    first_epoch = [logs["update_norm"] for logs in seen[:4]]
    assert first_epoch[0] > 0 and "update_norm" in (tmp_path / "log.csv").read_text()


def test_a_checkpoint_taken_mid_epoch_with_custom_step_logs_loads_into_a_fresh_trainer():
    x, y = _data(16)
    saved = {}

    class Save(__import__("callbacks").Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.trainer.step == 2:
                saved["tree"] = self.trainer.checkpoint_state()

    first = NormLogging(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1), steps_per_execution=1)
    first.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[Save()])
    assert saved["tree"]["step_keys"] == ["one", "update_norm"]

    class Load(__import__("callbacks").Callback):
        def on_train_begin(self, logs=None):
            self.trainer.load_checkpoint_state(saved["tree"])

    fresh = NormLogging(nnx.Linear(3, 1, rngs=nnx.Rngs(1)), optax.sgd(0.1), steps_per_execution=1)
    hist = fresh.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[Load()])
    assert fresh.step == 4 and hist.history["one"] == [1.0]
    np.testing.assert_allclose(np.asarray(fresh.model.kernel.value), np.asarray(first.model.kernel.value), rtol=1e-6)
