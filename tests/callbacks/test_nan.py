import logging
import math

from _standin import StandInTrainer, TinyModel, run_epochs

from callbacks import CallbackList, TerminateOnNaN


def test_nan_batch_loss_stops_training(caplog):
    trainer = StandInTrainer(TinyModel())
    with caplog.at_level(logging.INFO, logger="callbacks"):
        ran = run_epochs(trainer, [TerminateOnNaN()], [{"loss": 1.0}, {"loss": math.nan}, {"loss": 0.5}])
    assert ran == 2 and trainer.stop_training is True
    # said once (not again at the epoch's end), and through the callbacks logger
    assert caplog.text.count("terminating training") == 1
    assert "Batch 0: invalid loss nan, terminating training" in caplog.text


def test_infinite_epoch_loss_stops_training():
    trainer = StandInTrainer(TinyModel())
    cb = TerminateOnNaN()
    cb.set_trainer(trainer)
    cb.on_epoch_end(0, {"loss": 2.0})
    assert trainer.stop_training is False
    cb.on_epoch_end(1, {"loss": -math.inf})
    assert trainer.stop_training is True


def test_finite_losses_and_missing_loss_keep_training():
    trainer = StandInTrainer(TinyModel())
    ran = run_epochs(trainer, [TerminateOnNaN()], [{"loss": 1.0}, {"accuracy": 0.5}, {"loss": 1e30}])
    assert ran == 3 and trainer.stop_training is False


def test_asks_for_batch_logs():
    assert CallbackList([TerminateOnNaN()]).needs_batch_logs("train")


def test_a_counted_non_finite_step_stops_training_with_a_reason(capsys):
    # the Trainer skips a non-finite step and leaves it out of the running loss: the loss stays
    # finite, the logs count the step
    trainer = StandInTrainer(TinyModel())
    cb = TerminateOnNaN()
    cb.set_trainer(trainer)
    cb.set_params({"verbose": 1})  # a verbose fit prints what the callback says
    cb.on_train_batch_end(0, {"loss": 1.0})
    assert trainer.stop_training is False and getattr(trainer, "stop_reason", None) is None
    cb.on_train_batch_end(1, {"loss": 1.0, "nonfinite_steps": 1.0, "first_nonfinite_step": 1.0})
    assert trainer.stop_training is True and trainer.stop_reason == "terminate_on_nan"
    assert "Batch 1: 1 non-finite step(s) (first_nonfinite_step=1), terminating training" in capsys.readouterr().out
