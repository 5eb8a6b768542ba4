"""Built-in losses, the inference table, target checks, and running metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainer import losses, metrics, steps


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
    assert losses.infer_loss(f32(8, 1), np.zeros(8, np.float32)) == "mse"
    with pytest.raises(ValueError, match=r"\(8, 1\).*\(8,\).*loss="):
        losses.infer_loss(f32(8, 1), np.arange(8))
    with pytest.raises(ValueError, match=r"\(8, 10\) float32.*\(8, 3\) float32"):
        losses.infer_loss(f32(8, 10), np.zeros((8, 3), np.float32))


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
    assert metrics.accuracy(jnp.array([[0.3], [-0.2]]), jnp.array([1, 1])).tolist() == [1.0, 0.0]
