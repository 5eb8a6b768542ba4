import pytest
from _standin import StandInTrainer, TinyModel, run_epochs

from callbacks import LambdaCallback, LearningRateScheduler, ReduceLROnPlateau


def _val(values):
    return [{"loss": 1.0, "val_loss": v} for v in values]


def test_reduce_lr_lowers_learning_rate_after_patience():
    trainer = StandInTrainer(TinyModel(), learning_rate=0.1)
    rates = []
    reduce = ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.0)
    record = LambdaCallback(on_epoch_end=lambda epoch, logs: rates.append(trainer.learning_rate))
    run_epochs(trainer, [reduce, record], _val([1.0, 0.9, 0.95, 0.92, 0.91, 0.5, 0.6, 0.7]))
    # epochs 2, 3 do not improve on 0.9 -> halve at epoch 3; epoch 4 waits again; 5 improves;
    # epochs 6, 7 do not improve -> halve at epoch 7
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025])
    assert trainer.lr_scale == 1.0


def test_reduce_lr_scales_lr_scale_without_injected_rate_and_respects_min_lr():
    trainer = StandInTrainer(TinyModel(), learning_rate=None)
    reduce = ReduceLROnPlateau(factor=0.1, patience=1, min_lr=0.005)
    run_epochs(trainer, [reduce], _val([1.0, 1.0, 1.0, 1.0, 1.0]))
    # 1.0 -> 0.1 -> 0.01 -> 0.005 (min_lr) -> stays
    assert trainer.lr_scale == pytest.approx(0.005)
    assert trainer.learning_rate is None


def test_reduce_lr_cooldown_and_min_delta():
    trainer = StandInTrainer(TinyModel(), learning_rate=1.0)
    reduce = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2, min_delta=0.05)
    # 0.97 is within min_delta of 1.0: no improvement -> reduce at epoch 1; the cooldown counter
    # (2) ticks down at epochs 2 and 3 (Keras semantics), so epoch 2 is skipped and epoch 3
    # counts again and reduces; epoch 4 is in cooldown again
    rates = []
    record = LambdaCallback(on_epoch_end=lambda epoch, logs: rates.append(trainer.learning_rate))
    run_epochs(trainer, [reduce, record], _val([1.0, 0.97, 0.99, 0.98, 0.99]))
    assert rates == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25])


def test_reduce_lr_auto_mode_maximizes_accuracy_and_state_round_trip():
    trainer = StandInTrainer(TinyModel(), learning_rate=1.0)
    reduce = ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=1)
    assert reduce.mode == "max"
    run_epochs(trainer, [reduce], [{"val_accuracy": a} for a in (0.5, 0.6, 0.7)])
    assert trainer.learning_rate == 1.0  # rising accuracy is improvement
    assert reduce.state_dict() == {"wait": 0, "best": 0.7, "cooldown_counter": 0}
    resumed = ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=1)
    resumed.load_state_dict({"wait": 0, "best": 0.7, "cooldown_counter": 0})
    run_epochs(trainer, [resumed], [{"val_accuracy": 0.65}])
    assert trainer.learning_rate == 0.5  # 0.65 is worse than the restored best 0.7


def test_reduce_lr_bad_factor_and_missing_monitor():
    with pytest.raises(ValueError, match=r"factor must be in \(0, 1\), got 1.5"):
        ReduceLROnPlateau(factor=1.5)
    trainer = StandInTrainer(TinyModel(), learning_rate=1.0)
    with pytest.warns(UserWarning, match="monitor='val_loss'.*available keys: \\['loss'\\]"):
        run_epochs(trainer, [ReduceLROnPlateau(patience=0)], [{"loss": 1.0}] * 3)
    assert trainer.learning_rate == 1.0
    assert not ReduceLROnPlateau().overrides("on_train_batch_end")


def test_scheduler_sets_rate_at_each_epoch_begin():
    trainer = StandInTrainer(TinyModel(), learning_rate=0.1)
    seen = []
    record = LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(trainer.learning_rate))

    def schedule(epoch, lr):
        return lr if epoch < 2 else lr * 0.5

    run_epochs(trainer, [LearningRateScheduler(schedule), record], [{"loss": 1.0}] * 4)
    assert seen == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert not LearningRateScheduler(schedule).overrides("on_train_batch_begin")


def test_scheduler_without_injected_rate_raises_with_the_fix():
    trainer = StandInTrainer(TinyModel(), learning_rate=None)
    with pytest.raises(ValueError, match=r"optax.inject_hyperparams\(optax.adam\)\(learning_rate=1e-3\)"):
        run_epochs(trainer, [LearningRateScheduler(lambda epoch, lr: lr)], [{"loss": 1.0}])


def test_scheduler_rejects_non_float_output():
    trainer = StandInTrainer(TinyModel(), learning_rate=0.1)
    with pytest.raises(TypeError, match=r"schedule\(0, lr\) must return a float, got str"):
        run_epochs(trainer, [LearningRateScheduler(lambda epoch, lr: "fast")], [{"loss": 1.0}])
    with pytest.raises(TypeError, match="schedule must be a callable"):
        LearningRateScheduler(0.1)


def test_fit_reduce_lr_changes_injected_rate_without_recompiling():
    import optax
    from _standin import Regressor, counting_trainer, regression_data

    x, y = regression_data(32)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    trainer = counting_trainer(Regressor(), tx, loss="mse")
    traces = []
    record = LambdaCallback(on_epoch_end=lambda epoch, logs: traces.append(trainer.traces))
    # min_delta is huge: no epoch after the first improves, so the rate drops every epoch
    reduce = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=1e9)
    history = trainer.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[reduce, record])
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert trainer.learning_rate == pytest.approx(0.0125)
    assert traces == [1, 1, 1, 1]  # compiled once, before any change


def test_fit_reduce_lr_scales_lr_scale_and_scheduler_needs_injected_rate():
    import optax
    from _standin import Regressor, counting_trainer, regression_data

    x, y = regression_data(32)
    trainer = counting_trainer(Regressor(), optax.sgd(0.1), loss="mse")
    reduce = ReduceLROnPlateau(monitor="loss", factor=0.1, patience=1, min_delta=1e9, min_lr=0.005)
    history = trainer.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[reduce])
    assert history.history["lr_scale"] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    assert trainer.lr_scale == pytest.approx(0.005)
    assert trainer.traces == 1
    with pytest.raises(ValueError, match="optimizer has no injected learning_rate"):
        trainer.fit(x, y, epochs=1, batch_size=8, verbose=0,
                    callbacks=[LearningRateScheduler(lambda epoch, lr: lr)])


def test_fit_scheduler_sets_the_rate_used_by_each_epoch():
    import optax
    from _standin import Regressor, counting_trainer, regression_data

    x, y = regression_data(32)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    trainer = counting_trainer(Regressor(), tx, loss="mse")
    scheduler = LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    history = trainer.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[scheduler])
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert trainer.traces == 1


def test_setting_the_learning_rate_replaces_the_array_instead_of_mutating_held_state():
    import optax
    from _standin import Regressor

    from trainer import lr as lrlib
    from trainer.trainer import Trainer

    trainer = Trainer(Regressor(), optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), loss="mse")
    held = trainer.optimizer_state()
    old = lrlib.find_hyperparams(held)["learning_rate"]
    trainer.learning_rate = 0.5
    assert lrlib.find_hyperparams(held)["learning_rate"] is old and float(old) == pytest.approx(0.1)
    assert trainer.learning_rate == 0.5


def test_reduce_lr_never_counts_a_nan_as_an_improvement():
    trainer = StandInTrainer(TinyModel(), learning_rate=1.0)
    reduce = ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0)
    run_epochs(trainer, [reduce], _val([float("nan"), 1.0, float("nan"), 0.5]))
    # a NaN first epoch would be "best" forever (nothing compares below NaN): the rate would
    # drop at epoch 3. It is no improvement: 1.0 then 0.5 are, and the rate stays
    assert reduce.best == 0.5 and reduce.wait == 0 and trainer.learning_rate == 1.0
