"""Built-in losses, the inference table, target checks, Keras-order callables, running means."""

import doctest
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainer import losses, metric_functions, metrics, steps


def test_builtin_losses_are_per_example_and_match_optax():
    p = jnp.array([[0.5, -1.0], [2.0, 0.0], [0.0, 0.0]])
    labels = jnp.array([1, 0, 1])
    ce = losses.sparse_categorical_crossentropy(p, labels)
    assert ce.shape == (3,)
    np.testing.assert_allclose(ce, optax.softmax_cross_entropy_with_integer_labels(p, labels), rtol=1e-6)
    np.testing.assert_allclose(losses.sparse_categorical_crossentropy(p, labels[:, None]), ce, rtol=1e-6)
    onehot = jax.nn.one_hot(labels, 2)
    np.testing.assert_allclose(losses.categorical_crossentropy(p, onehot), ce, rtol=1e-6)
    t = jnp.array([[1.0, 1.0], [0.0, 0.0], [1.0, -1.0]])
    np.testing.assert_allclose(losses.mean_squared_error(p, t), [2.125, 2.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(losses.mean_absolute_error(p, t), [1.25, 1.0, 1.0], rtol=1e-6)
    assert losses.huber(p, t).shape == (3,)
    b = losses.binary_crossentropy(jnp.array([[0.0], [2.0]]), jnp.array([1, 0]))
    np.testing.assert_allclose(b, optax.sigmoid_binary_cross_entropy(jnp.array([0.0, 2.0]), jnp.array([1.0, 0.0])), rtol=1e-6)


def test_inference_table():
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    assert losses.infer_loss(f32(8, 10), np.zeros(8, np.int32)) == "sparse_categorical_crossentropy"
    assert losses.infer_loss(f32(8, 10), np.zeros((8, 1), np.int64)) == "sparse_categorical_crossentropy"
    assert losses.infer_loss(f32(8, 1), np.array([0, 1] * 4)) == "binary_crossentropy"
    assert losses.infer_loss(f32(8), np.array([True, False] * 4)) == "binary_crossentropy"
    assert losses.infer_loss(f32(8, 3), np.zeros((8, 3), np.float32)) == "mse"
    assert losses.infer_loss(f32(8, 1), np.zeros(8, np.float32)) == "mse"  # zeros alone: regression
    assert losses.infer_loss(f32(8, 1), np.linspace(0, 1, 8, dtype=np.float32)) == "mse"
    # float 0/1 targets with one logit: binary cross-entropy, not mse
    assert losses.infer_loss(f32(8, 1), np.array([0.0, 1.0] * 4, np.float32)) == "binary_crossentropy"
    assert losses.infer_loss(f32(8), np.array([[1.0], [0.0]] * 4, np.float32)) == "binary_crossentropy"
    # float one-hot targets: softmax cross-entropy; rows that are not one-hot stay mse
    onehot = np.eye(3, dtype=np.float32)[[0, 2, 1, 1, 0, 2, 2, 0]]
    assert losses.infer_loss(f32(8, 3), onehot) == "categorical_crossentropy"
    assert losses.infer_loss(f32(8, 3), onehot * 0.5) == "mse"
    assert losses.infer_loss(f32(8, 3), np.ones((8, 3), np.float32)) == "mse"
    # (N, T, V) logits with (N, T) integer targets: per-token cross-entropy
    assert losses.infer_loss(f32(4, 5, 7), np.zeros((4, 5), np.int32)) == "sparse_categorical_crossentropy"
    assert losses.infer_loss(f32(4, 5, 7), np.zeros((4, 5, 1), np.int32)) == "sparse_categorical_crossentropy"
    tokens_onehot = np.eye(7, dtype=np.float32)[np.arange(20).reshape(4, 5) % 7]
    assert losses.infer_loss(f32(4, 5, 7), tokens_onehot) == "categorical_crossentropy"
    with pytest.raises(ValueError, match=r"\(4, 5, 7\).*\(4, 6\)"):
        losses.infer_loss(f32(4, 5, 7), np.zeros((4, 6), np.int32))
    with pytest.raises(ValueError, match=r"\(8, 1\).*\(8,\).*loss="):
        losses.infer_loss(f32(8, 1), np.arange(8))
    with pytest.raises(ValueError, match=r"\(8, 10\) float32.*\(8, 3\) float32"):
        losses.infer_loss(f32(8, 10), np.zeros((8, 3), np.float32))


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_per_token_cross_entropy_is_one_value_per_example_matching_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=(3, 4))
    # numpy reference: -log softmax at the label, averaged over the 4 tokens of each example
    picked = np.take_along_axis(_log_softmax(logits.astype(np.float64)), labels[..., None], -1)[..., 0]
    expected = -picked.mean(axis=1)
    got = losses.LOSSES[losses.infer_loss(jnp.asarray(logits), labels.astype(np.int32))](jnp.asarray(logits), labels)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    onehot = np.eye(5, dtype=np.float32)[labels]
    np.testing.assert_allclose(losses.categorical_crossentropy(jnp.asarray(logits), onehot), expected, rtol=1e-5)
    assert "per token" in losses.describe("sparse_categorical_crossentropy", logits)
    assert "per token" not in losses.describe("sparse_categorical_crossentropy", logits[:, 0])


def test_binary_crossentropy_on_float_targets_matches_the_formula():
    logits = np.array([[-1.5], [0.3], [2.0], [0.0]], np.float32)
    targets = np.array([0.0, 1.0, 0.0, 1.0], np.float32)
    p = 1 / (1 + np.exp(-logits[:, 0].astype(np.float64)))
    expected = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    np.testing.assert_allclose(losses.binary_crossentropy(jnp.asarray(logits), targets), expected, rtol=1e-5)


def _keras_mse(y_true, y_pred):
    return jnp.mean((y_pred - y_true) ** 2 + y_true, axis=-1)  # "+ y_true": the order shows


def _keras_named_reversed(y_pred, y_true):
    return jnp.mean((y_pred - y_true) ** 2 + y_true, axis=-1)


def pos_only(y_true, y_pred, /):
    return y_pred - y_true


def test_keras_order_callables_are_called_with_targets_and_predictions_in_place():
    predictions = jnp.array([[1.0, 2.0], [0.0, -1.0]])
    targets = jnp.array([[0.0, 2.0], [1.0, 1.0]])
    p, t = np.asarray(predictions), np.asarray(targets)
    expected = ((p - t) ** 2 + t).mean(axis=-1)  # the numpy formula with y_true = targets
    wrapped = losses.keras_order(lambda a, b: jnp.mean((b - a) ** 2 + a, axis=-1))
    np.testing.assert_allclose(wrapped(predictions, targets), expected, rtol=1e-6)
    assert wrapped.announced and losses.keras_order(wrapped) is wrapped
    # detected by the parameter names, in either position, and called by name
    for fn in (_keras_mse, _keras_named_reversed):
        name, loss = losses.get_loss(fn)
        assert name == fn.__name__ and isinstance(loss, losses.KerasOrder)
        np.testing.assert_allclose(loss(predictions, targets), expected, rtol=1e-6)
        assert not loss.announced and "y_true=targets, y_pred=predictions" in loss.note
    # optax's order and names are left alone
    name, loss = losses.get_loss(optax.l2_loss)
    assert loss is optax.l2_loss and name == "l2_loss"
    # positional-only y_true/y_pred: by position
    loss = losses.in_our_order(pos_only)
    assert not loss.by_name and "pos_only(targets, predictions)" in loss.note
    np.testing.assert_allclose(loss(predictions, targets), p - t)
    assert list(inspect.signature(loss).parameters) == ["predictions", "targets"]


def test_target_checks_and_names():
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    with pytest.raises(TypeError, match="integer class labels"):
        losses.check_targets("sparse_categorical_crossentropy", f32(4, 3), np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="one-hot"):
        losses.check_targets("categorical_crossentropy", f32(4, 3), np.zeros(4, np.int32))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        losses.check_targets("mse", f32(4, 3), np.zeros((4, 2), np.float32))
    assert losses.get_loss("cross_entropy")[0] == "sparse_categorical_crossentropy"
    with pytest.raises(TypeError, match="callable"):
        losses.get_loss(3)


def test_weighted_mean_is_zero_not_nan_for_zero_weights():
    v = jnp.array([1.0, 2.0, 3.0])
    mean, total = steps.weighted_mean(v, jnp.zeros(3))
    assert float(mean) == 0.0 and float(total) == 0.0
    g = jax.grad(lambda x: steps.weighted_mean(x**2, jnp.zeros(3))[0])(v)
    np.testing.assert_array_equal(g, [0.0, 0.0, 0.0])
    mean, total = steps.weighted_mean(v, jnp.array([1.0, 0.0, 3.0]))
    assert float(mean) == pytest.approx(2.5) and float(total) == 4.0


def test_running_metrics_accumulate_weighted_means():
    specs = metrics.resolve_metrics(["accuracy"])
    state = metrics.init_state(specs, ())
    preds = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    for labels, w in [(jnp.array([0, 0]), None), (jnp.array([1, 1]), jnp.array([1.0, 0.0]))]:
        state = metrics.update_state(
            specs, state, loss=jnp.array(1.0), weight_total=jnp.array(2.0 if w is None else 1.0),
            aux={}, predictions=preds, targets=labels,
            weights=w, per_example_loss=None,
        )
    out = metrics.results(specs, state)
    assert float(out["accuracy"]) == pytest.approx(1 / 3)  # 1 of 2, then 0 of 1
    assert float(out["loss"]) == pytest.approx(1.0)
    assert metric_functions.accuracy(jnp.array([[0.3], [-0.2]]), jnp.array([1, 1])).tolist() == [1.0, 0.0]


def test_docstring_examples_run():
    runner = doctest.DocTestRunner()
    globs = {"CountMetric": metrics.CountMetric, "keras_order": losses.keras_order}
    for obj in (losses.keras_order, metrics.CountMetric):
        for test in doctest.DocTestFinder().find(obj, globs=globs):
            runner.run(test)
    assert runner.summarize(verbose=False) == doctest.TestResults(failed=0, attempted=4)
