"""Running metrics against independent references: sklearn.metrics and numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import metrics as skm

import nnx
from trainer import Trainer, metrics

BATCH = 128


def _accumulate(specs, predictions, targets, weights):
    """Run ``update_state`` (jitted: one compilation per call of this helper) over batches of
    ``BATCH`` rows, the last one padded with rows of weight 0 and arbitrary values."""
    metrics.bind_classes(specs, jax.ShapeDtypeStruct((BATCH, *predictions.shape[1:]), jnp.float32))
    n = len(predictions)
    pad = -n % BATCH
    predictions = np.concatenate([predictions, np.repeat(predictions[:1] + 3.0, pad, 0)])
    targets = np.concatenate([targets, np.repeat(targets[:1], pad, 0)])
    weights = np.concatenate([weights, np.zeros(pad, np.float32)])

    @jax.jit
    def step(state, p, t, w):
        state = metrics.update_state(
            specs, state, loss=jnp.float32(0.0), weight_total=jnp.sum(w), aux={},
            predictions=p, targets=t, weights=w, per_example_loss=None,
        )
        return state, metrics.results(specs, state)

    state = jax.tree.map(jnp.asarray, metrics.init_state(specs))
    for i in range(0, n + pad, BATCH):
        state, out = step(state, predictions[i : i + BATCH], targets[i : i + BATCH], weights[i : i + BATCH])
    return state, {k: float(v) for k, v in out.items()}


def _binary_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logits = (rng.normal(size=n) + 1.2 * (y - 0.5)).astype(np.float32)[:, None]
    w = rng.uniform(0.2, 2.0, n).astype(np.float32)
    return logits, y, w


def _sigmoid(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def test_binary_counted_metrics_match_sklearn_with_sample_weights_and_padding():
    logits, y, w = _binary_data()
    names = ["precision", "recall", "f1", "auc", "pr_auc", "binary_accuracy", "accuracy"]
    specs = metrics.resolve_metrics(names)
    state, out = _accumulate(specs, logits, y.astype(np.int32), w)
    predicted, scores = (logits[:, 0] > 0).astype(int), _sigmoid(logits[:, 0])
    assert out["precision"] == pytest.approx(skm.precision_score(y, predicted, sample_weight=w), rel=1e-5)
    assert out["recall"] == pytest.approx(skm.recall_score(y, predicted, sample_weight=w), rel=1e-5)
    assert out["f1"] == pytest.approx(skm.f1_score(y, predicted, sample_weight=w), rel=1e-5)
    assert out["binary_accuracy"] == pytest.approx(skm.accuracy_score(y, predicted, sample_weight=w), rel=1e-5)
    assert out["accuracy"] == pytest.approx(out["binary_accuracy"], rel=1e-6)
    # the histogram of 200 thresholds approximates the exact areas
    assert out["auc"] == pytest.approx(skm.roc_auc_score(y, scores, sample_weight=w), abs=5e-3)
    assert out["pr_auc"] == pytest.approx(skm.average_precision_score(y, scores, sample_weight=w), abs=1e-2)
    # one count vector: (tp, fp, fn) shared by precision/recall/f1, one histogram for both areas
    assert set(state) == {"means", "counts", "objects"}
    assert state["counts"].shape == (3 + 2 * 200,) and state["means"].shape == (3, 2)


def test_probabilities_with_from_logits_false_give_the_same_values():
    logits, y, w = _binary_data(200, seed=1)
    specs = metrics.resolve_metrics({
        "precision": metrics.CountMetric("precision", from_logits=False),
        "auc": metrics.CountMetric("auc", from_logits=False),
    })
    _, out = _accumulate(specs, _sigmoid(logits).astype(np.float32), y.astype(np.float32), w)
    predicted = (logits[:, 0] > 0).astype(int)
    assert out["precision"] == pytest.approx(skm.precision_score(y, predicted, sample_weight=w), rel=1e-5)
    assert out["auc"] == pytest.approx(skm.roc_auc_score(y, logits[:, 0], sample_weight=w), abs=5e-3)


def _multiclass_data(n=300, classes=4, seed=2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = (rng.normal(size=(n, classes)) + np.eye(classes)[y]).astype(np.float32)
    w = rng.uniform(0.2, 2.0, n).astype(np.float32)
    return logits, y, w


def test_multiclass_metrics_are_macro_averages_matching_sklearn():
    logits, y, w = _multiclass_data()
    names = ["precision", "recall", "f1", "auc", "pr_auc", "categorical_accuracy"]
    specs = metrics.resolve_metrics(names)
    state, out = _accumulate(specs, logits, y.astype(np.int32), w)
    predicted = logits.argmax(1)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for name, fn in [("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)]:
        assert out[name] == pytest.approx(fn(y, predicted, sample_weight=w, average="macro"), rel=1e-5), name
    assert out["categorical_accuracy"] == pytest.approx(skm.accuracy_score(y, predicted, sample_weight=w), rel=1e-5)
    roc = skm.roc_auc_score(y, probs, sample_weight=w, multi_class="ovr", average="macro")
    assert out["auc"] == pytest.approx(roc, abs=5e-3)
    ap = skm.average_precision_score(np.eye(4)[y], probs, sample_weight=w, average="macro")
    assert out["pr_auc"] == pytest.approx(ap, abs=1e-2)
    assert state["counts"].shape == (3 * 4 + 2 * 4 * 200,)
    # one-hot targets count the same
    specs = metrics.resolve_metrics(["f1", "categorical_accuracy"])
    _, onehot = _accumulate(specs, logits, np.eye(4, dtype=np.float32)[y], w)
    assert onehot["f1"] == pytest.approx(out["f1"], rel=1e-6)
    assert onehot["categorical_accuracy"] == pytest.approx(out["categorical_accuracy"], rel=1e-6)


def test_macro_average_skips_classes_that_never_occur_as_sklearn_does():
    logits, y, w = _multiclass_data(130, classes=5, seed=3)
    keep = y != 4
    logits, y, w = logits[keep], y[keep], w[keep]
    logits[:, 4] = -10.0  # class 4 neither a target nor predicted
    specs = metrics.resolve_metrics(["precision", "recall"])
    _, out = _accumulate(specs, logits, y.astype(np.int32), w)
    predicted = logits.argmax(1)
    assert out["precision"] == pytest.approx(skm.precision_score(y, predicted, sample_weight=w, average="macro"), rel=1e-5)
    assert out["recall"] == pytest.approx(skm.recall_score(y, predicted, sample_weight=w, average="macro"), rel=1e-5)


def test_sequence_predictions_count_every_token_with_its_example_weight():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(40, 3, 4)).astype(np.float32)
    y = rng.integers(0, 4, size=(40, 3))
    w = rng.uniform(0.5, 1.5, 40).astype(np.float32)
    specs = metrics.resolve_metrics(["precision", "categorical_accuracy"])
    _, out = _accumulate(specs, logits, y.astype(np.int32), w)
    flat_w = np.repeat(w, 3)
    flat_pred, flat_y = logits.argmax(-1).reshape(-1), y.reshape(-1)
    expected = skm.precision_score(flat_y, flat_pred, sample_weight=flat_w, average="macro")
    assert out["precision"] == pytest.approx(expected, rel=1e-5)
    assert out["categorical_accuracy"] == pytest.approx(skm.accuracy_score(flat_y, flat_pred, sample_weight=flat_w), rel=1e-5)


def squared_gap(predictions, targets):
    return ((predictions - targets) ** 2).sum(axis=-1)


def keras_gap(y_true, y_pred):
    return jnp.abs(y_pred - y_true).sum(axis=-1) + y_true.sum(axis=-1)


def test_plain_functions_are_per_example_metrics_named_after_the_function():
    rng = np.random.default_rng(5)
    p = rng.normal(size=(50, 2)).astype(np.float32)
    t = rng.normal(size=(50, 2)).astype(np.float32)
    w = rng.uniform(0.1, 1.0, 50).astype(np.float32)
    specs = metrics.resolve_metrics([squared_gap, keras_gap, "mse"])
    assert [s.name for s in specs] == ["squared_gap", "keras_gap", "mse"]
    _, out = _accumulate(specs, p, t, w)
    # numpy references: weighted means of the per-example values
    assert out["squared_gap"] == pytest.approx(np.average(((p - t) ** 2).sum(1), weights=w), rel=1e-5)
    assert out["keras_gap"] == pytest.approx(np.average(np.abs(p - t).sum(1) + t.sum(1), weights=w), rel=1e-5)
    assert out["mse"] == pytest.approx(np.average(((p - t) ** 2).mean(1), weights=w), rel=1e-5)
    assert metrics.resolve_metrics(squared_gap)[0].name == "squared_gap"
    assert metrics.resolve_metrics({"gap": lambda p, t: p[:, 0]})[0].name == "gap"
    with pytest.raises(ValueError, match="lambda has no name"):
        metrics.resolve_metrics([lambda p, t: p[:, 0]])


def test_errors_name_the_metric_and_the_fix():
    scalar = metrics.resolve_metrics({"batch_mean": lambda p, t: jnp.mean(p)})
    state = metrics.init_state(scalar)
    kw = dict(loss=jnp.float32(0), weight_total=jnp.float32(4), aux={}, weights=None, per_example_loss=None)
    with pytest.raises(ValueError, match=r"'batch_mean' returned shape \(\).*shape \(4,\)"):
        metrics.update_state(scalar, state, predictions=jnp.zeros((4, 2)), targets=jnp.zeros((4, 2)), **kw)
    binary = metrics.resolve_metrics(["recall"])  # no first batch seen: one binary column
    with pytest.raises(ValueError, match=r"'recall'.*\(4, 3\).*CountMetric\('recall', num_classes=3\)"):
        metrics.update_state(binary, metrics.init_state(binary), predictions=jnp.zeros((4, 3)),
                             targets=jnp.zeros(4, jnp.int32), **kw)
    with pytest.raises(ValueError, match="unknown metric 'prec'.*'pr_auc'"):
        metrics.resolve_metrics(["prec"])
    with pytest.raises(ValueError, match="curve='XY'"):
        metrics.CountMetric("auc", curve="XY")
    assert metrics.CountMetric("auc", curve="pr").name == "pr_auc"
    assert metrics.resolve_metrics(metrics.CountMetric("f1", num_classes=3))[0].classes == 3


def test_counts_start_at_zero_and_give_zero_not_nan():
    specs = metrics.resolve_metrics(["precision", "auc", "pr_auc"])
    out = metrics.results(specs, jax.tree.map(jnp.asarray, metrics.init_state(specs)))
    assert {k: float(v) for k, v in out.items()} == {"loss": 0.0, "precision": 0.0, "auc": 0.0, "pr_auc": 0.0}


class Logistic(nnx.Module):
    def __init__(self):
        self.linear = nnx.Linear(3, 1, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.linear(x)


def test_trainer_fit_and_evaluate_match_sklearn_on_the_predictions():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -1.0, 0.5]) + 0.7 * rng.normal(size=200) > 0).astype(np.float32)
    x_val, y_val = x[140:], y[140:]
    w = rng.uniform(0.2, 2.0, 200).astype(np.float32)
    trainer = Trainer(Logistic(), optax.adam(1e-2), metrics=["precision", "recall", "f1", "auc"])
    # 140 and 60 rows in batches of 32: the last batch of each is padded and masked
    hist = trainer.fit(x[:140], y[:140], epochs=2, batch_size=32, validation_data=(x_val, y_val), verbose=0)
    logits = np.asarray(trainer.predict(x, batch_size=32, verbose=0))[:, 0]
    predicted, scores = (logits > 0).astype(int), _sigmoid(logits)
    val_pred, val_scores = predicted[140:], scores[140:]
    assert hist.history["val_precision"][-1] == pytest.approx(skm.precision_score(y_val, val_pred), rel=1e-5)
    assert hist.history["val_recall"][-1] == pytest.approx(skm.recall_score(y_val, val_pred), rel=1e-5)
    assert hist.history["val_f1"][-1] == pytest.approx(skm.f1_score(y_val, val_pred), rel=1e-5)
    assert hist.history["val_auc"][-1] == pytest.approx(skm.roc_auc_score(y_val, val_scores), abs=1e-2)
    ev = trainer.evaluate(x, y, sample_weight=w, batch_size=32, verbose=0)
    assert ev["precision"] == pytest.approx(skm.precision_score(y, predicted, sample_weight=w), rel=1e-5)
    assert ev["recall"] == pytest.approx(skm.recall_score(y, predicted, sample_weight=w), rel=1e-5)
    assert ev["f1"] == pytest.approx(skm.f1_score(y, predicted, sample_weight=w), rel=1e-5)
    assert ev["auc"] == pytest.approx(skm.roc_auc_score(y, scores, sample_weight=w), abs=1e-2)
    # the float 0/1 targets were given binary cross-entropy: the loss is its weighted mean
    bce = -(y * np.log(scores) + (1 - y) * np.log(1 - scores))
    assert ev["loss"] == pytest.approx(np.average(bce, weights=w), rel=1e-4)
