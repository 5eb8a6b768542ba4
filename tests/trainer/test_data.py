"""Data sources: arrays, lists of batches, generators, grain datasets, validation data."""

import grain
import jax
import numpy as np
import optax
import pytest

import nnx
from trainer import Trainer
from trainer import batches as batchlib


def _xy(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return x, (x @ np.array([[1.0], [2.0], [-1.0]], np.float32)).astype(np.float32)


def _trainer():
    return Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1))


def test_calling_styles_give_the_same_result():
    x, y = _xy()
    results = []
    for args in [((x, y), {}), (((x, y),), {}), (({"x": x, "y": y},), {})]:
        t = _trainer()
        t.fit(*args[0], batch_size=16, shuffle=False, verbose=0)
        results.append(np.asarray(t.model.kernel.value))
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 48, 16)]
    t = _trainer()
    t.fit(batches, verbose=0)
    results.append(np.asarray(t.model.kernel.value))
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-6)


def test_generator_needs_steps_per_epoch_and_continues_across_epochs():
    x, y = _xy()

    def stream():
        while True:
            for i in range(0, 48, 16):
                yield x[i : i + 16], y[i : i + 16]

    t = _trainer()
    with pytest.raises(ValueError, match="steps_per_epoch"):
        t.fit(stream(), epochs=2, verbose=0)
    hist = t.fit(stream(), epochs=3, steps_per_epoch=2, verbose=0)
    assert t.step == 6 and len(hist.history["loss"]) == 3
    # one epoch from a finite generator needs no steps_per_epoch
    gen = ((x[i : i + 16], y[i : i + 16]) for i in range(0, 48, 16))
    t.fit(gen, epochs=1, verbose=0)
    assert t.step == 9


def test_grain_map_dataset_iter_dataset_and_dataloader():
    x, y = _xy(64)
    records = [{"x": x[i], "y": y[i]} for i in range(64)]
    mapped = grain.MapDataset.source(records).batch(16)
    t = _trainer()
    hist = t.fit(mapped, epochs=2, verbose=0)  # re-iterable: a fresh pass per epoch
    assert t.step == 8 and hist.history["loss"][1] < hist.history["loss"][0]

    stream = grain.MapDataset.source(records).repeat().to_iter_dataset().batch(16)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        t.fit(stream, epochs=2, verbose=0)
    t.fit(stream, epochs=2, steps_per_epoch=3, verbose=0)
    assert t.step == 14

    loader = grain.DataLoader(
        data_source=records,
        sampler=grain.samplers.IndexSampler(64, shuffle=False, num_epochs=1, seed=0),
        operations=[grain.transforms.Batch(16)],
        worker_count=0,
    )
    t.fit(loader, epochs=2, verbose=0)
    assert t.step == 22
    ev = t.evaluate(mapped, verbose=0)
    assert ev["loss"] == pytest.approx(_trainer_loss(t, x, y), rel=1e-5)


def _trainer_loss(t, x, y):
    pred = np.asarray(t.model(x))
    return float(np.mean((pred - y) ** 2))


def test_iterable_evaluate_pads_the_partial_batch_without_recompiling():
    x, y = _xy(40)
    t = _trainer()
    batches = [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])]
    ev = t.evaluate(batches, verbose=0)
    assert ev["loss"] == pytest.approx(_trainer_loss(t, x, y), rel=1e-5)
    fns = t._runtime.compiler.compiled("eval")
    assert len(fns) == 1 and fns[0]._cache_size() == 1


def test_validation_split_takes_the_tail_and_validation_data_accepts_datasets():
    x, y = _xy(50)
    t = _trainer()
    hist = t.fit(x, y, validation_split=0.2, epochs=2, batch_size=8, verbose=0)
    assert set(hist.history) == {"loss", "val_loss"}
    assert hist.history["val_loss"][-1] == pytest.approx(_trainer_loss(t, x[40:], y[40:]), rel=1e-5)
    hist = t.fit(x[:40], y[:40], validation_data=[(x[40:], y[40:])], epochs=2, validation_freq=2, verbose=0)
    assert len(hist.history["val_loss"]) == 1
    with pytest.raises(ValueError, match="validation_split"):
        t.fit([(x, y)], validation_split=0.5, verbose=0)


def test_multi_input_models_get_positional_and_keyword_arguments():
    class Two(nnx.Module):
        def __init__(self):
            self.a = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
            self.b = nnx.Linear(2, 1, rngs=nnx.Rngs(1))

        def __call__(self, left, right):
            return self.a(left) + self.b(right)

    rng = np.random.default_rng(0)
    left = rng.normal(size=(24, 3)).astype(np.float32)
    right = rng.normal(size=(24, 2)).astype(np.float32)
    y = rng.normal(size=(24, 1)).astype(np.float32)
    t = Trainer(Two(), optax.sgd(0.1))
    h1 = t.fit((left, right), y, batch_size=8, shuffle=False, verbose=0)
    t2 = Trainer(Two(), optax.sgd(0.1))
    h2 = t2.fit({"left": left, "right": right}, y, batch_size=8, shuffle=False, verbose=0)
    assert h1.history["loss"] == pytest.approx(h2.history["loss"], rel=1e-6)
    assert t.predict((left, right), verbose=0).shape == (24, 1)


def test_batch_helpers():
    keys = batchlib.BatchKeys()
    batch = (np.arange(3.0)[:, None], np.array([0, 1, 2]))
    padded = batchlib.pad_batch(batch, 5, keys)
    np.testing.assert_array_equal(padded[2], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(padded[0][:, 0], [0, 1, 2, 2, 2])
    assert batchlib.batch_parts({"x": 1, "y": 2}, keys) == (1, 2, None)
    with pytest.raises(ValueError, match="4 parts"):
        batchlib.batch_parts((1, 2, 3, 4), keys)
    w = batchlib.class_weights(np.array([0, 1, 1, 2]), {1: 2.0})
    np.testing.assert_array_equal(w, [1, 2, 2, 1])
    stacked = batchlib.stack([batch, batch])
    assert jax.tree.map(np.shape, stacked) == ((2, 3, 1), (2, 3))


def test_datasets_of_similar_lengths_share_the_compiled_steps():
    from trainer.data import bucket_rows

    assert [bucket_rows(n, 16) for n in (1, 100, 120, 128, 129)] == [1, 128, 128, 128, 256]
    assert bucket_rows(10**7, 64) == 10 * 2**20  # large data: a sixteenth of 2**24 at most
    traces = {"train": 0, "eval": 0, "predict": 0}

    class Counting(Trainer):
        def train_step(self, state, batch):
            traces["train"] += 1
            return super().train_step(state, batch)

        def eval_step(self, state, batch):
            traces["eval"] += 1
            return super().eval_step(state, batch)

        def predict_step(self, state, batch):
            traces["predict"] += 1
            return super().predict_step(state, batch)

    x, y = _xy(120)
    t = Counting(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1), steps_per_execution=1)
    t.fit(x[:100], y[:100], batch_size=20, epochs=1, verbose=0)
    t.evaluate(x[:50], y[:50], batch_size=20, verbose=0)
    t.predict(x[:50], batch_size=20, verbose=0)
    first = dict(traces)
    t.fit(x, y, batch_size=20, epochs=1, verbose=0)  # 120 rows: the same bucket as 100
    t.evaluate(x[:60], y[:60], batch_size=20, verbose=0)
    t.predict(x[:60], batch_size=20, verbose=0)
    assert traces == first
    # the padding rows are never trained on or predicted
    assert t.predict(x[:50], batch_size=20, verbose=0).shape == (50, 1)


def test_predict_on_a_generator_warns_nothing():
    x, _ = _xy(10)
    t = Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1))

    def batches():
        for i in range(0, 10, 4):
            yield x[i : i + 4]

    out = t.predict(batches(), verbose=0)  # filterwarnings=error: jax's pytree warning would fail
    np.testing.assert_allclose(out, t.predict(x, verbose=0), rtol=1e-6)
