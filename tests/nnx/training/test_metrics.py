import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.training.metrics import Accuracy, Average, MetricState, Statistics, Welford


def test_average_matches_numpy_over_batches():
    avg = Average("loss")
    batches = [np.array([1.0, 2.0, 3.0]), np.array([10.0]), np.array(4.0)]
    for b in batches:
        avg.update(loss=b, logits=None, unused=123)
    expected = np.concatenate([np.ravel(b) for b in batches]).mean()
    np.testing.assert_allclose(avg.compute(), expected, rtol=1e-6)


def test_average_mask_drops_rows():
    avg = Average()
    values = np.array([[1.0, 2.0], [100.0, 200.0], [3.0, 4.0]])
    mask = np.array([1.0, 0.0, 1.0])
    avg.update(values=values, mask=mask)
    np.testing.assert_allclose(avg.compute(), np.mean([1.0, 2.0, 3.0, 4.0]), rtol=1e-6)


def test_average_reset_keeps_variable_identity():
    avg = Average()
    total = avg.total
    avg.update(values=jnp.ones(3))
    avg.reset()
    assert avg.total is total
    assert isinstance(avg.total, MetricState)
    assert float(avg.count.value) == 0.0
    assert np.isnan(float(avg.compute()))


def test_average_missing_argument_names_it():
    with pytest.raises(TypeError, match="'loss'"):
        Average("loss").update(values=1.0)


def test_accuracy_multiclass_with_mask_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=(8,))
    mask = np.array([1, 1, 0, 1, 0, 1, 1, 1], dtype=bool)
    acc = Accuracy()
    acc.update(logits=logits, labels=labels, mask=mask, loss=0.3)
    correct = logits.argmax(-1) == labels
    np.testing.assert_allclose(acc.compute(), correct[mask].mean(), rtol=1e-6)


def test_accuracy_binary_threshold():
    acc = Accuracy(threshold=0.5)
    acc.update(logits=jnp.array([0.9, 0.2, 0.7, 0.4]), labels=jnp.array([1, 0, 0, 1]))
    np.testing.assert_allclose(acc.compute(), 0.5)


def test_accuracy_shape_error_suggests_threshold():
    with pytest.raises(ValueError, match="threshold"):
        Accuracy().update(logits=jnp.zeros((4,)), labels=jnp.zeros((4,), jnp.int32))


def test_welford_matches_numpy_with_mask():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5,)).astype(np.float32)
    b = rng.normal(size=(7,)).astype(np.float32)
    mask_b = np.array([1, 0, 1, 1, 0, 1, 1], dtype=np.float32)
    w = Welford("x")
    w.update(x=a)
    w.update(x=b, mask=mask_b)
    kept = np.concatenate([a, b[mask_b > 0]])
    stats = w.compute()
    assert isinstance(stats, Statistics)
    np.testing.assert_allclose(stats.mean, kept.mean(), rtol=1e-5)
    np.testing.assert_allclose(stats.standard_deviation, kept.std(), rtol=1e-5)
    np.testing.assert_allclose(
        stats.standard_error_of_mean, kept.std() / np.sqrt(len(kept)), rtol=1e-5
    )


def test_multimetric_forwards_kwargs_and_resets():
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2]])
    metrics.update(loss=jnp.array([1.0, 3.0]), logits=logits, labels=jnp.array([1, 1]))
    out = metrics.compute()
    assert set(out) == {"loss", "accuracy"}
    np.testing.assert_allclose(out["loss"], 2.0)
    np.testing.assert_allclose(out["accuracy"], 0.5)
    metrics.reset()
    assert float(metrics.loss.count.value) == 0.0


def test_multimetric_rejects_reserved_name():
    with pytest.raises(ValueError, match="'update'"):
        nnx.MultiMetric(update=Average())


def test_metrics_update_inside_jit_via_split_merge():
    metrics = nnx.MultiMetric(loss=Average("loss"), stats=Welford("loss"))
    graphdef, state = nnx.split(metrics)

    @jax.jit
    def step(state, loss):
        m = nnx.merge(graphdef, state)
        m.update(loss=loss)
        return nnx.state(m)

    state = step(state, jnp.array([1.0, 2.0]))
    state = step(state, jnp.array([6.0]))
    nnx.update(metrics, state)
    np.testing.assert_allclose(metrics.compute()["loss"], 3.0)
    np.testing.assert_allclose(metrics.stats.compute().mean, 3.0)


def test_multimetric_mask_per_metric_and_custom_metric_without_mask():
    class Picky(Average):
        def update(self, values, labels):  # takes no mask, and only these arguments
            super().update(values=values)

    metrics = nnx.MultiMetric(loss=Average(), picky=Picky(), acc=Accuracy())
    values = np.array([1.0, 2.0, 3.0, 4.0])
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = np.array([1, 1, 1, 1])
    mask = np.array([1.0, 1.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="unexpected keyword argument 'logits'"):
        metrics.update(values=values, labels=labels, logits=logits, mask={"loss": mask})
    metrics = nnx.MultiMetric(loss=Average(), acc=Accuracy())
    metrics.update(values=values, labels=labels, logits=logits, mask={"loss": mask})
    out = metrics.compute()
    np.testing.assert_allclose(out["loss"], values[:2].mean())  # masked
    np.testing.assert_allclose(out["acc"], 0.5)  # unmasked
    metrics.update(values=values, labels=labels, logits=logits, mask=mask)  # one mask for all
    np.testing.assert_allclose(metrics.acc.compute(), (2 + 1) / (4 + 2))
    picky = nnx.MultiMetric(p=Picky())
    picky.update(values=values, labels=labels, mask={"p": None})
    np.testing.assert_allclose(picky.compute()["p"], values.mean())
    with pytest.raises(KeyError, match=r"unknown metrics \['nope'\]"):
        metrics.update(values=values, labels=labels, logits=logits, mask={"nope": mask})


def test_average_of_python_numbers_and_mask_needs_an_array():
    avg = Average()
    avg.update(values=2)
    avg.update(values=3.0)
    np.testing.assert_allclose(avg.compute(), 2.5)
    with pytest.raises(ValueError, match="should be a jax array"):
        avg.update(values=2, mask=jnp.ones(5))


def test_metric_split_and_merge_keep_the_accumulated_state():
    acc = Accuracy()
    acc.update(logits=jnp.array([[0.0, 1.0], [1.0, 0.0]]), labels=jnp.array([1, 1]))
    graphdef, state = acc.split()
    again = nnx.merge(graphdef, state)
    np.testing.assert_allclose(again.compute(), 0.5)


def test_binary_accuracy_counts_logits_at_the_threshold_as_positive():
    acc = Accuracy(threshold=0.5)
    acc.update(logits=jnp.array([0.5, 0.49, 0.9]), labels=jnp.array([1, 0, 2]))
    np.testing.assert_allclose(acc.compute(), 1.0)  # labels > 0 are positives
    with pytest.raises(ValueError, match="For binary classification"):
        acc.update(logits=jnp.zeros(4), labels=jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="For multi-class classification"):
        Accuracy().update(logits=jnp.zeros((2, 2, 2)), labels=jnp.zeros(4, jnp.int32))
