import pytest
from _standin import StandInTrainer, TinyModel, run_epochs

from callbacks import CallbackList, LambdaCallback


def test_given_hooks_are_called_with_keras_arguments():
    calls = []
    cb = LambdaCallback(
        on_train_begin=lambda logs: calls.append(("train_begin", logs)),
        on_epoch_begin=lambda epoch, logs: calls.append(("epoch_begin", epoch)),
        on_epoch_end=lambda epoch, logs: calls.append(("epoch_end", epoch, logs["loss"])),
        on_train_batch_end=lambda batch, logs: calls.append(("batch_end", batch, logs["loss"])),
        on_train_end=lambda logs: calls.append(("train_end", logs)),
    )
    run_epochs(StandInTrainer(TinyModel()), [cb], [{"loss": 0.5}, {"loss": 0.25}], steps_per_epoch=2)
    assert calls == [
        ("train_begin", None),
        ("epoch_begin", 0), ("batch_end", 0, 0.5), ("batch_end", 1, 0.5), ("epoch_end", 0, 0.5),
        ("epoch_begin", 1), ("batch_end", 0, 0.25), ("batch_end", 1, 0.25), ("epoch_end", 1, 0.25),
        ("train_end", None),
    ]


def test_only_given_hooks_count_as_overridden():
    epoch_only = LambdaCallback(on_epoch_end=lambda epoch, logs: None)
    assert epoch_only.overrides("on_epoch_end")
    assert not epoch_only.overrides("on_epoch_begin")
    assert not epoch_only.overrides("on_train_batch_end")
    assert not CallbackList([epoch_only]).needs_batch_logs("train")

    with_batches = LambdaCallback(on_train_batch_begin=lambda batch, logs: None)
    hooks = CallbackList([epoch_only, with_batches])
    assert hooks.needs_batch_logs("train")
    assert not hooks.needs_batch_logs("test")
    tests = LambdaCallback(on_test_batch_end=lambda batch, logs: None)
    assert CallbackList([tests]).needs_batch_logs("test")


def test_hooks_not_given_do_nothing_and_non_callables_are_rejected():
    cb = LambdaCallback()
    cb.on_epoch_end(0, {"loss": 1.0})  # defined on the class, but a no-op
    assert not any(cb.overrides(h) for h in ("on_epoch_end", "on_train_begin", "on_predict_end"))
    with pytest.raises(TypeError, match="on_epoch_end must be a callable or None, got int"):
        LambdaCallback(on_epoch_end=3)


def test_lambda_can_stop_training():
    trainer = StandInTrainer(TinyModel())

    def stop_after_second(epoch, logs):
        if epoch == 1:
            trainer.stop_training = True

    ran = run_epochs(trainer, [LambdaCallback(on_epoch_end=stop_after_second)], [{"loss": 1.0}] * 5)
    assert ran == 2
