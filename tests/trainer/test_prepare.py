"""The first-batch checks: the loss chosen and said once, Keras-order callables, metric classes."""

import logging

import jax
import jax.numpy as jnp
import numpy as np

from trainer import batches as batchlib
from trainer import losses, prepare
from trainer import metrics as metriclib

NO_LOSS = prepare.LossChoice(None, None, True)


def _choose(batch, outputs, given=NO_LOSS, metrics=(), verbose=1):
    def predictions_of(inputs):
        return jnp.zeros((inputs.shape[0], *outputs), jnp.float32)

    return prepare.choose_loss(given, object(), batch, batchlib.BatchKeys(), metrics, predictions_of, verbose)


def test_an_inferred_loss_is_printed_when_verbose_logged_at_debug_and_silent_at_0(capsys, caplog):
    x = np.zeros((6, 2), np.float32)
    batch = (x, np.array([0.0, 1.0] * 3, np.float32))
    with caplog.at_level(logging.DEBUG, logger="trainer"):
        choice = _choose(batch, (1,))
    assert choice.name == "binary_crossentropy" and choice.fn is losses.binary_crossentropy
    out = capsys.readouterr()
    assert "loss='binary_crossentropy'" in out.out and "(6, 1)" in out.out and out.err == ""
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "binary_crossentropy" in caplog.records[0].getMessage()
    choice = _choose(batch, (1,), verbose=0)
    assert choice.name == "binary_crossentropy"
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_per_token_cross_entropy_is_chosen_and_said_per_token(capsys):
    batch = (np.zeros((2, 5), np.float32), np.zeros((2, 5), np.int32))
    choice = _choose(batch, (5, 11))
    assert choice.name == "sparse_categorical_crossentropy"
    assert "per token" in capsys.readouterr().out
    batch = (np.zeros((2, 5), np.float32), np.eye(3, dtype=np.float32)[[0, 2]])
    assert _choose(batch, (3,), verbose=0).name == "categorical_crossentropy"


def my_hinge(y_true, y_pred):
    return jnp.maximum(0.0, 1.0 - y_true * y_pred).mean(axis=-1)


def test_a_keras_order_loss_is_said_once_and_called_in_keras_order(capsys):
    name, fn = losses.get_loss(my_hinge)
    given = prepare.LossChoice(name, fn, True)
    batch = (np.zeros((4, 2), np.float32), np.array([[1.0], [-1.0], [1.0], [-1.0]], np.float32))
    choice = _choose(batch, (1,), given=given)
    _choose(batch, (1,), given=given)
    out = capsys.readouterr().out
    assert out.count("my_hinge(y_true=targets, y_pred=predictions)") == 1
    # numpy reference: the hinge with y_true = the targets
    p = np.array([[0.5], [0.5], [-2.0], [2.0]], np.float32)
    t = np.asarray(batch[1])
    np.testing.assert_allclose(choice.fn(jnp.asarray(p), jnp.asarray(t)), np.maximum(0, 1 - t * p)[:, 0])


def test_counted_metrics_take_their_classes_from_the_first_batch():
    specs = metriclib.resolve_metrics(["f1", "auc", metriclib.CountMetric("precision", num_classes=2)])
    batch = (np.zeros((4, 2), np.float32), np.array([0, 3, 1, 2], np.int32))
    _choose(batch, (4,), metrics=specs, verbose=0)
    assert [s.classes for s in specs] == [4, 4, 2]
    state = metriclib.init_state(specs)
    assert state["counts"].shape == (3 * 4 + 2 * 4 * 200 + 3 * 2,)
    binary = (np.zeros((4, 2), np.float32), np.array([0, 1, 1, 0], np.int32))
    _choose(binary, (1,), metrics=specs, verbose=0)
    assert [s.classes for s in specs] == [1, 1, 2]
    assert jax.tree.structure(metriclib.init_state(specs)) == jax.tree.structure(state)
