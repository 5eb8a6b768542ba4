import numpy as np
import pytest
from _standin import StandInTrainer, TinyModel, run_epochs, set_weights

from callbacks import EarlyStopping


def _logs(values, key="val_loss"):
    return [{"loss": 1.0, key: v} for v in values]


def test_stops_after_patience_epochs_without_improvement():
    trainer = StandInTrainer(TinyModel())
    stop = EarlyStopping(monitor="val_loss", patience=2)
    # best at epoch 2 (0.5); epochs 3 and 4 do not improve -> stop at epoch 4
    ran = run_epochs(trainer, [stop], _logs([1.0, 0.8, 0.5, 0.6, 0.55, 0.1, 0.1]))
    assert ran == 5
    assert stop.stopped_epoch == 4
    assert stop.best == 0.5 and stop.best_epoch == 2
    assert trainer.stop_training is True


def test_patience_zero_stops_at_first_non_improvement_and_min_delta_counts():
    trainer = StandInTrainer(TinyModel())
    stop = EarlyStopping(patience=0, min_delta=0.1)
    # 0.95 improves on 1.0 by less than min_delta: not an improvement
    ran = run_epochs(trainer, [stop], _logs([1.0, 0.95, 0.5]))
    assert ran == 2 and stop.stopped_epoch == 1 and stop.best == 1.0


def test_restores_weights_seen_at_the_best_epoch():
    model = TinyModel()
    trainer = StandInTrainer(model)
    stop = EarlyStopping(patience=2, restore_best_weights=True)
    seen = {}

    def train(epoch):
        set_weights(model, float(epoch + 1))
        seen[epoch] = (np.asarray(model.kernel.value), np.asarray(model.mean.value))

    ran = run_epochs(trainer, [stop], _logs([0.9, 0.3, 0.7, 0.8, 0.1]), on_epoch=train)
    assert ran == 4 and stop.best_epoch == 1
    np.testing.assert_array_equal(model.kernel.value, seen[1][0])
    np.testing.assert_array_equal(model.mean.value, seen[1][1])
    np.testing.assert_array_equal(model.bias.value, np.full((2,), 2.0))


def test_best_weights_are_independent_copies():
    model = TinyModel()
    trainer = StandInTrainer(model)
    stop = EarlyStopping(patience=5, restore_best_weights=True)
    stop.set_trainer(trainer)
    stop.on_train_begin()
    set_weights(model, 7.0)
    stop.on_epoch_end(0, {"val_loss": 0.1})
    kept = stop.best_weights["kernel"].value
    assert kept is not model.kernel.value
    set_weights(model, -1.0)
    np.testing.assert_array_equal(kept, np.full((3, 2), 7.0))
    stop.on_train_end()
    np.testing.assert_array_equal(model.kernel.value, np.full((3, 2), 7.0))
    # RNG state is not part of the kept weights
    assert "rngs" not in stop.best_weights


def test_mode_auto_maximizes_accuracy_and_baseline_counts_towards_patience():
    stop = EarlyStopping(monitor="val_accuracy")
    assert stop.mode == "max"
    assert EarlyStopping(monitor="val_loss").mode == "min"
    accuracies = [0.5, 0.6, 0.7, 0.65, 0.66, 0.95]
    # improving on the best but not on the baseline does not reset the wait
    stop = EarlyStopping(monitor="val_accuracy", patience=2, baseline=0.9)
    ran = run_epochs(StandInTrainer(TinyModel()), [stop], _logs(accuracies, key="val_accuracy"))
    assert ran == 4 and stop.best == 0.7 and stop.stopped_epoch == 3
    stop = EarlyStopping(monitor="val_accuracy", patience=2)
    ran = run_epochs(StandInTrainer(TinyModel()), [stop], _logs(accuracies, key="val_accuracy"))
    assert ran == 5 and stop.best == 0.7 and stop.stopped_epoch == 4


def test_start_from_epoch_ignores_warm_up_epochs():
    trainer = StandInTrainer(TinyModel())
    stop = EarlyStopping(patience=0, start_from_epoch=2)
    ran = run_epochs(trainer, [stop], _logs([1.0, 2.0, 3.0, 2.5, 2.6]))
    assert ran == 5 and stop.best == 2.5 and stop.stopped_epoch == 4


def test_missing_monitor_warns_once_and_never_stops():
    trainer = StandInTrainer(TinyModel())
    stop = EarlyStopping(monitor="val_auc", patience=0)
    with pytest.warns(UserWarning, match="monitor='val_auc'.*available keys: \\['loss', 'val_loss'\\]") as record:
        ran = run_epochs(trainer, [stop], _logs([1.0, 2.0, 3.0]))
    assert ran == 3 and len(record) == 1


def test_state_dict_round_trip_keeps_progress_and_best_weights():
    model = TinyModel()
    trainer = StandInTrainer(model)
    stop = EarlyStopping(patience=3, restore_best_weights=True)
    stop.set_trainer(trainer)
    stop.on_train_begin()
    set_weights(model, 3.0)
    stop.on_epoch_end(0, {"val_loss": 0.2})
    stop.on_epoch_end(1, {"val_loss": 0.4})
    saved = stop.state_dict()
    assert {k: saved[k] for k in ("wait", "best", "best_epoch")} == {"wait": 1, "best": 0.2, "best_epoch": 0}
    assert sorted(saved["best_weights"]) == ["bias", "kernel", "mean"]
    np.testing.assert_array_equal(saved["best_weights"]["kernel"], np.full((3, 2), 3.0))

    resumed = EarlyStopping(patience=3, restore_best_weights=True)
    resumed.set_trainer(trainer)
    resumed.load_state_dict(saved)
    resumed.on_train_begin()  # keeps the loaded progress
    set_weights(model, 9.0)
    resumed.on_epoch_end(2, {"val_loss": 0.5})
    assert resumed.wait == 2 and resumed.best == 0.2
    resumed.on_train_end()
    np.testing.assert_array_equal(model.kernel.value, np.full((3, 2), 3.0))
    np.testing.assert_array_equal(model.mean.value, np.full((2,), -3.0))


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max', got 'up'"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="patience must be >= 0, got -1"):
        EarlyStopping(patience=-1)


def test_defines_no_batch_hooks():
    stop = EarlyStopping()
    assert not stop.overrides("on_train_batch_end") and not stop.overrides("on_train_batch_begin")
    assert stop.overrides("on_epoch_end")


def test_fit_stops_and_restores_the_parameters_of_the_best_epoch():
    import optax
    from _standin import Regressor, regression_data

    from callbacks import LambdaCallback
    from trainer.trainer import Trainer

    x, y = regression_data(32)
    model = Regressor()
    seen = {}

    def record(epoch, logs):
        seen[epoch] = np.asarray(model.kernel.value).copy()
        seen[("bias", epoch)] = np.asarray(model.bias.value).copy()

    # the loss falls every epoch; with mode="max" the first epoch is the best, so training
    # stops after `patience` more epochs and the first epoch's parameters come back
    stop = EarlyStopping(monitor="loss", mode="max", patience=2, restore_best_weights=True)
    trainer = Trainer(model, optax.sgd(0.05), loss="mse")
    history = trainer.fit(
        x, y, epochs=10, batch_size=8, verbose=0,
        callbacks=[LambdaCallback(on_epoch_end=record), stop],
    )
    assert len(history.history["loss"]) == 3 and stop.stopped_epoch == 2 and stop.best_epoch == 0
    assert not np.array_equal(seen[0], seen[2])
    np.testing.assert_array_equal(np.asarray(model.kernel.value), seen[0])
    # the Trainer takes the restored weights back: evaluating uses them
    expected = float(np.mean((x @ seen[0] + seen[("bias", 0)] - y) ** 2))
    assert trainer.evaluate(x, y, batch_size=8, verbose=0)["loss"] == pytest.approx(expected, rel=1e-5)


def test_a_nan_epoch_never_counts_as_an_improvement():
    trainer = StandInTrainer(TinyModel())
    stop = EarlyStopping(monitor="val_loss", patience=2)
    # a NaN first epoch must not become the best forever; a NaN later is no improvement either
    ran = run_epochs(trainer, [stop], _logs([np.nan, 1.0, 0.8, np.nan, 0.7, np.nan, np.nan]))
    assert ran == 7 and stop.best == 0.7 and stop.best_epoch == 4
    assert stop.stopped_epoch == 6 and trainer.stop_training is True
    stop.load_state_dict({"wait": 0, "best": float("nan"), "best_epoch": 0})  # an old checkpoint's NaN best
    run_epochs(trainer, [stop], _logs([2.0]))
    assert stop.best == 2.0


def test_checkpointed_best_weights_come_back_in_the_models_dtypes():
    import jax.numpy as jnp

    import nnx

    class Half(nnx.Module):
        def __init__(self):
            self.kernel = nnx.Param(jnp.zeros((3, 2), jnp.bfloat16))

    model = Half()
    stop = EarlyStopping(patience=3, restore_best_weights=True)
    stop.set_trainer(StandInTrainer(model))
    weights = {"kernel": np.full((3, 2), 2.0, np.float32)}  # saved from a float32 run
    stop.load_state_dict({"wait": 0, "best": 0.1, "best_epoch": 0, "best_weights": weights})
    stop.on_train_end()
    assert model.kernel.value.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(model.kernel.value, np.float32), np.full((3, 2), 2.0))
