"""Bad arguments raise early, naming the argument; Keras's spellings are accepted."""

import numpy as np
import optax
import pytest

import nnx
from trainer import Trainer


def _data(n=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return x, rng.integers(0, 2, size=n).astype(np.int32)


def _trainer(**kwargs):
    return Trainer(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), optax.sgd(0.1), **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 1.5}, "epochs must be an int >= 1, got 1.5"),
        ({"epochs": "3"}, "epochs must be an int >= 1, got '3'"),
        ({"max_steps": -1}, "max_steps must be None or an int >= 1, got -1"),
        ({"validation_freq": 0}, "validation_freq must be an int >= 1, got 0"),
        ({"validation_freq": [0, 2]}, "validation_freq as a list"),
        ({"steps_per_epoch": 0}, "steps_per_epoch must be None or an int >= 1"),
        ({"initial_epoch": -1}, "initial_epoch must be an int >= 0"),
    ],
)
def test_fit_refuses_bad_counts(kwargs, message):
    x, y = _data()
    with pytest.raises(ValueError, match=message):
        _trainer().fit(x, y, verbose=0, **kwargs)


def test_trainer_arguments_are_checked():
    with pytest.raises(ValueError, match="seed=...\\) must be an int, got 'abc'"):
        _trainer(seed="abc")
    with pytest.raises(TypeError, match=r"did you mean optax.adam\(learning_rate\)"):
        Trainer(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), optax.adam)
    with pytest.raises(ValueError, match="steps_per_execution must be 'auto' or an int >= 1"):
        _trainer(steps_per_execution=0)


def test_string_labels_and_regression_class_weights_are_refused():
    x, _ = _data(4)
    with pytest.raises(TypeError, match=r"y holds strings .*encode labels as integers"):
        _trainer().fit(x, np.array(["a", "b", "a", "b"]), verbose=0)
    with pytest.raises(TypeError, match=r"x holds Python objects"):
        _trainer().fit(np.array([object()] * 4), np.zeros(4, np.int32), verbose=0)
    with pytest.raises(ValueError, match="class_weight needs class labels"):
        _trainer(loss="mse").fit(x, np.linspace(0, 1, 4, dtype=np.float32)[:, None], class_weight={0: 1.0}, verbose=0)


def test_evaluate_return_dict_and_zero_steps():
    x, y = _data()
    trainer = _trainer(metrics=("accuracy",))
    trainer.fit(x, y, verbose=0)
    as_dict = trainer.evaluate(x, y, verbose=0, return_dict=True)
    loss, acc = trainer.evaluate(x, y, verbose=0, return_dict=False)
    assert set(as_dict) == {"loss", "accuracy"} and (loss, acc) == (as_dict["loss"], as_dict["accuracy"])
    assert isinstance(_trainer().evaluate(x, y, verbose=0, return_dict=False), float)
    with pytest.raises(ValueError, match="steps=...\\) must be None or an int >= 1, got 0"):
        trainer.evaluate(x, y, steps=0, verbose=0)


def test_an_exhausted_validation_iterator_is_an_error_not_a_zero_loss():
    x, y = _data(16)
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 16, 4)]
    with pytest.raises(ValueError, match="validation_data is a one-shot iterator .* validates 3 times"):
        _trainer().fit(x, y, epochs=3, validation_data=iter(batches), verbose=0)
    # with validation_steps, each validation reads that many batches; once dry, it says so
    with pytest.raises(ValueError, match="ran over no batch: its data iterator is exhausted"):
        _trainer().fit(x, y, epochs=3, validation_data=iter(batches), validation_steps=2, verbose=0)
    hist = _trainer().fit(x, y, epochs=2, validation_data=iter(batches * 2), validation_steps=4, verbose=0)
    assert len(hist.history["val_loss"]) == 2


def test_repr_names_the_parts():
    text = repr(_trainer(loss="sparse_categorical_crossentropy", metrics=("accuracy",), steps_per_execution=4))
    assert text == (
        "Trainer(model=Linear, optimizer=optax.chain(...), loss='sparse_categorical_crossentropy', "
        "metrics=['accuracy'], steps_per_execution=4)"
    )


@pytest.mark.parametrize("bad", [2, -1])
def test_labels_outside_the_classes_are_refused_before_training(bad):
    x, y = _data(16)
    y = y.copy()
    y[5] = bad  # 2 classes: labels 0 and 1
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    before = np.asarray(model.kernel.value).copy()
    with pytest.raises(ValueError, match=rf"y holds the label {bad} .* the model has 2 outputs, so the labels must be 0 .. 1"):
        Trainer(model, optax.sgd(0.1)).fit(x, y, verbose=0)
    np.testing.assert_array_equal(np.asarray(model.kernel.value), before)
    with pytest.raises(ValueError, match=rf"y holds the label {bad}"):
        Trainer(model, optax.sgd(0.1)).evaluate(x, y, verbose=0)


def test_labels_outside_the_classes_in_streamed_batches_stop_training_on_the_device_check():
    x, y = _data(32)
    batches = [(x[i : i + 4], y[i : i + 4].copy()) for i in range(0, 32, 4)]
    batches[3][1][0] = 7  # batch 3
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    trainer = Trainer(model, optax.sgd(0.1), steps_per_execution=1)
    with pytest.raises(ValueError, match=r"integer target 7, but the model has 2 outputs, so the labels must be 0 .. 1"):
        trainer.fit(batches, epochs=2, verbose=0)
    assert np.isfinite(np.asarray(model.kernel.value)).all()  # the bad batch was skipped
    with pytest.raises(ValueError, match=r"integer target 7"):
        trainer.evaluate(batches, verbose=0)
