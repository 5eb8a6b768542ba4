"""BackupAndRestore: a killed run resumes exactly; grain iterator positions; callback state."""

import os
import signal
import subprocess
import sys

import _backup_run
import grain
import numpy as np
import optax
import pytest

import callbacks
import checkpointing
from callbacks import BackupAndRestore, EarlyStopping, ReduceLROnPlateau
from trainer import Trainer
from trainer import batches as batchlib
from trainer import data as datalib

SCRIPT = os.path.join(os.path.dirname(__file__), "_backup_run.py")


def test_run_killed_between_backups_mid_epoch_resumes_to_identical_parameters(tmp_path):
    backup_dir, ready = tmp_path / "backup", tmp_path / "ready"
    # backups after steps 3 and 6; blocked (then killed) after step 7: epoch 1, batch 1
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        killed = subprocess.Popen(
            [sys.executable, SCRIPT, str(backup_dir), "--block-after", "7", "--ready", str(ready)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        # the uninterrupted run, here, while the child trains
        initial, expected, restored = _backup_run.train(str(tmp_path / "straight"))
        assert restored is None and not (tmp_path / "straight").exists()  # deleted on completion
    finally:
        _backup_run.kill_when_ready(killed, ready, 120, log)
    assert killed.returncode == -signal.SIGKILL
    assert ready.read_text() == "1 1"  # killed in the middle of epoch 1
    assert BackupAndRestore(backup_dir).steps() == [6]  # the last backup before the kill

    out = tmp_path / "resumed.npz"
    resumed = subprocess.run(
        [sys.executable, SCRIPT, str(backup_dir), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from the backup at step 6 (epoch 1, batch 1)" in resumed.stdout
    saved = np.load(out)
    assert int(saved["restored"]) == 6 > 0
    final = [saved[f"arr_{i}"] for i in range(len(expected))]
    for got, want, first in zip(final, expected, initial, strict=True):
        assert np.array_equal(got, want)
        assert not np.array_equal(got, first)
    assert not backup_dir.exists()  # the resumed run completed: its backup is gone


class CrashAfter(callbacks.Callback):
    """Raises after step ``step`` once the backups in flight are written (inert when None)."""

    def __init__(self, step, backup):
        super().__init__()
        self.step, self.backup = step, backup

    def on_train_batch_end(self, batch, logs=None):
        if self.step is not None and self.trainer.step == self.step:
            self.backup.wait_until_finished()
            raise RuntimeError("crash")


def _records():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    return [{"x": x[i], "y": x[i].sum(keepdims=True)} for i in range(20)]


def _iter_dataset():  # one stream for both epochs, reshuffled per epoch by grain
    return grain.MapDataset.source(_records()).shuffle(seed=3).repeat(2).to_iter_dataset().batch(4)


class _CountingSource(list):
    reads = 0

    def __getitem__(self, index):
        type(self).reads += 1
        return super().__getitem__(index)


def _data_loader():  # re-iterated each epoch; its iterator's state is bytes
    return grain.DataLoader(
        data_source=_CountingSource(_records()),
        sampler=grain.samplers.IndexSampler(20, shuffle=True, num_epochs=1, seed=4),
        operations=[grain.transforms.Batch(4)],
        worker_count=0,
    )


def test_grain_iterator_position_is_restored_exactly(tmp_path):
    make_source = _iter_dataset
    model = _backup_run.Net()
    trainer = Trainer(model, optax.adam(0.05), loss="mse")
    trainer.save(tmp_path / "initial")  # one Trainer for the three runs: one compile

    def run(directory, crash_after=None):
        trainer.restore(tmp_path / "initial")
        backup = BackupAndRestore(directory, save_freq=3)
        trainer.fit(make_source(), epochs=2, steps_per_epoch=5, verbose=0,
                    callbacks=[backup, CrashAfter(crash_after, backup)])
        return backup, _backup_run.params(model)

    _, expected = run(tmp_path / "straight")
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / "backup", crash_after=7)  # backups after steps 3 and 6
    tree = BackupAndRestore(tmp_path / "backup")._store.load()[1]
    assert (tree["step"], tree["epoch"], tree["batch"]) == (6, 1, 1) and "data" in tree
    # a fresh source and a rewound Trainer: only the backup knows where the data was
    backup, final = run(tmp_path / "backup")
    assert backup.restored_step == 6 and trainer.step == 10
    for got, want in zip(final, expected, strict=True):
        assert np.array_equal(got, want)


def test_data_loader_position_survives_prefetch_and_an_encode_round_trip():
    data = datalib.from_user(_data_loader(), keys=batchlib.BatchKeys())
    data.peek()
    batches = list(data.epoch(None))  # read to the end, as prefetching reads ahead
    data.advance(2)  # but only two were trained
    text = checkpointing.encode_iterator_state(data.position_state())
    assert text.startswith("bytes:")  # a DataLoader iterator's state is bytes
    fresh = datalib.from_user(_data_loader(), keys=batchlib.BatchKeys())
    fresh.restore_position(checkpointing.decode_iterator_state(text))
    _CountingSource.reads = 0
    rest = list(fresh.epoch(None, skip=2))
    assert len(rest) == 3 and _CountingSource.reads == 12  # set_state: batches 0, 1 not read
    for got, want in zip(rest, batches[2:], strict=True):
        np.testing.assert_array_equal(got["x"], want["x"])


def test_callback_states_learning_rate_and_history_come_back_with_the_backup(tmp_path):
    from _standin import Regressor, regression_data

    x, y = regression_data(16)

    def make():
        # min_delta=10: no epoch counts as an improvement after the first
        reduce = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10)
        stop = EarlyStopping(monitor="loss", patience=5, min_delta=10)
        backup = BackupAndRestore(tmp_path / "backup", delete_checkpoint=False)
        tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
        return Trainer(Regressor(), tx, loss="mse", callbacks=[backup, reduce, stop]), reduce, stop

    first, reduce, stop = make()
    first.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert first.learning_rate == pytest.approx(0.025) and stop.wait == 2  # two reductions
    assert [type(c).__name__ for c in first.callbacks] == ["BackupAndRestore", "ReduceLROnPlateau", "EarlyStopping"]

    second, reduce2, stop2 = make()
    seen = []
    during = callbacks.LambdaCallback(on_train_begin=lambda logs: seen.extend(second.callbacks))
    history = second.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[during])  # nothing left to run
    # while fit runs: History after the user's callbacks, the checkpointing callbacks last
    assert [type(c).__name__ for c in seen] == [
        "ReduceLROnPlateau", "EarlyStopping", "LambdaCallback", "History", "BackupAndRestore"
    ]
    assert second.step == first.step == 6 and second.learning_rate == pytest.approx(0.025)
    assert (reduce2.wait, reduce2.best, reduce2.cooldown_counter) == (reduce.wait, reduce.best, reduce.cooldown_counter)
    assert (stop2.wait, stop2.best, stop2.best_epoch) == (stop.wait, stop.best, stop.best_epoch)
    assert history.epoch == [0, 1, 2] and history.history == first.history.history


def test_ctrl_c_keeps_a_backup_of_the_last_step_and_the_next_fit_completes_it(tmp_path, caplog):
    from _standin import Regressor, regression_data

    x, y = regression_data(16)

    class CtrlC(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.trainer.step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    backup = BackupAndRestore(tmp_path / "backup")
    trainer = Trainer(Regressor(), optax.sgd(0.1), loss="mse", callbacks=[backup])
    trainer.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[CtrlC()])
    assert trainer.interrupted and trainer.step == 3 and backup.steps() == [3]
    trainer.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert backup.restored_step == 3 and trainer.step == 6 and not (tmp_path / "backup").exists()
    assert "interrupted" in caplog.text


class Crash(callbacks.Callback):
    """Raises after step ``step`` at once: the backup of the step before may still be in flight."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if self.step is not None and self.trainer.step == self.step:
            raise RuntimeError("crash")


def test_a_fit_that_dies_on_an_exception_resumes_from_its_backup_when_run_again(tmp_path):
    from _standin import Regressor, regression_data

    from callbacks import ModelCheckpoint

    x, y = regression_data(32)
    backup = BackupAndRestore(tmp_path / "backup", save_freq=2)
    crash = Crash(3)
    trainer = Trainer(Regressor(), optax.sgd(0.1), loss="mse", callbacks=[backup, crash])
    with pytest.raises(RuntimeError, match="crash"):
        trainer.fit(x, y, batch_size=4, epochs=2, verbose=0,
                    callbacks=[ModelCheckpoint(tmp_path / "ckpt", save_freq=2)])
    crash.step = None
    # Keras's flow: the same fit again; a new ModelCheckpoint over the crashed run's checkpoints
    # is not refused, since the run continues from its backup
    again = ModelCheckpoint(tmp_path / "ckpt", save_freq=2)
    trainer.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[again])
    assert backup.restored_step == 2 and trainer.step == 16
    assert not (tmp_path / "backup").exists()  # completed: deleted
    assert again._store.steps() == [2, 4, 6, 8, 10, 12, 14, 16]


def test_a_run_stopped_by_non_finite_steps_keeps_its_last_backup(tmp_path, capsys):
    from _standin import Regressor, regression_data

    from callbacks import TerminateOnNaN

    x, y = regression_data(16)
    y[8:12] = np.nan  # the third batch (step 3)
    backup = BackupAndRestore(tmp_path / "backup", save_freq=1)
    trainer = Trainer(Regressor(), optax.sgd(0.1), loss="mse")
    trainer.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[TerminateOnNaN(), backup])
    assert trainer.step == 3 and trainer.stop_reason == "terminate_on_nan"
    assert backup.steps() == [2]  # kept, and not replaced by the state at the stop
    assert capsys.readouterr().out == ""  # verbose=0 is silent


def test_the_trainers_non_finite_stop_keeps_the_backup_and_a_finished_run_deletes_it(tmp_path):
    from _standin import StandInTrainer, TinyModel

    for reason, kept in (("nonfinite", True), ("terminate_on_nan", True), ("max_steps", False), (None, False)):
        directory = tmp_path / str(reason)
        checkpointing.CheckpointStore(directory).save(1, {"model": {"w": np.zeros(1)}, "optimizer": {}, "step": 1, "epoch": 0})
        backup = BackupAndRestore(directory)
        trainer = StandInTrainer(TinyModel())
        trainer.stop_reason, trainer.interrupted = reason, False  # what the Trainer sets when it stops
        backup.set_trainer(trainer)
        backup.on_train_end()
        assert directory.exists() is kept, reason


def test_on_train_exception_finishes_the_backup_and_logs_a_failed_write(tmp_path, monkeypatch, caplog):
    import errno
    import logging

    from _standin import Regressor
    from orbax.checkpoint._src.path import async_path

    trainer = Trainer(Regressor(), optax.sgd(0.1), loss="mse")
    backup = BackupAndRestore(tmp_path / "backup", double_checkpoint=True)
    backup.set_trainer(trainer)
    backup.save()  # in the background
    backup.on_train_exception(RuntimeError("crash"))
    assert os.listdir(tmp_path / "backup") == ["0"]  # written and committed

    write_text = async_path.write_text

    async def full(path, text):  # orbax's commit marker cannot be written: a full disk
        if os.path.basename(str(path)) == "commit_success.txt":
            raise OSError(errno.ENOSPC, "No space left on device")
        return await write_text(path, text)

    monkeypatch.setattr(async_path, "write_text", full)
    trainer.step = 1
    with caplog.at_level(logging.ERROR, logger="callbacks"):
        try:
            backup.save()
        except checkpointing.CheckpointWriteError:
            pass  # raised at once when the disk looks full; else by the hook below, which logs it
        backup.on_train_exception(RuntimeError("crash"))  # does not raise over the fit's error
    monkeypatch.undo()
    assert backup.steps() == [0] and os.listdir(tmp_path / "backup") == ["0"]
    if not any("writing checkpoint 1" in r.getMessage() for r in caplog.records):
        pytest.fail("the failed write was neither raised nor logged")


def test_a_damaged_data_iterator_state_falls_back_or_is_a_clear_error(tmp_path):
    import json

    model = _backup_run.Net()
    trainer = Trainer(model, optax.adam(0.05), loss="mse")
    directory = tmp_path / "backup"
    backup = BackupAndRestore(directory, save_freq=2, double_checkpoint=True, delete_checkpoint=False)
    trainer.fit(_iter_dataset(), epochs=2, steps_per_epoch=5, verbose=0, callbacks=[backup])
    assert backup.steps() == [8, 10]

    def damage(step, data):
        path = directory / str(step) / "meta" / "metadata"
        meta = json.loads(path.read_text())
        path.write_text(json.dumps({**meta, "data": data}))

    damage(10, "bytes:%%%")
    with pytest.warns(UserWarning, match=r"checkpoint 10 in .* cannot be used \(the data-iterator state "
                      r"'bytes:%%%' cannot be decoded .*\); using checkpoint 8 instead"):
        trainer.fit(_iter_dataset(), epochs=2, steps_per_epoch=5, verbose=0, callbacks=[backup])
    assert backup.restored_step == 8 and trainer.step == 10

    damage(10, "json:{}")  # decodes, but is no state of this pipeline's iterators
    before = _backup_run.params(model)
    with pytest.raises(ValueError, match=r"the checkpoint's data-iterator state does not fit this data source "
                       r"\(it lacks \["):
        trainer.fit(_iter_dataset(), epochs=2, steps_per_epoch=5, verbose=0, callbacks=[backup])
    for got, want in zip(_backup_run.params(model), before, strict=True):
        np.testing.assert_array_equal(got, want)  # checked before anything changed


def test_a_non_finite_state_is_never_backed_up_and_warns_once(tmp_path, caplog):
    import logging

    import jax.numpy as jnp
    from _standin import Regressor

    trainer = Trainer(Regressor(), optax.sgd(0.1), loss="mse")
    backup = BackupAndRestore(tmp_path / "backup")
    backup.set_trainer(trainer)
    assert backup.save() == 0
    trainer.model.bias.value = jnp.array([jnp.inf])
    with caplog.at_level(logging.WARNING, logger="callbacks"):
        trainer.step = 1
        assert backup.save() is None
        trainer.step = 2
        assert backup.save() is None  # silent: already said
    warned = [r.getMessage() for r in caplog.records if r.name == "callbacks"]
    assert len(warned) == 1 and "BackupAndRestore: the state at step 1 holds NaN or infinite values in model/bias" in warned[0]
    assert backup.steps() == [0]


_DIES = """
import optax
from _standin import Regressor, regression_data
from test_backup import Crash
from callbacks import BackupAndRestore
from trainer import Trainer

x, y = regression_data(32)
trainer = Trainer(Regressor(), optax.sgd(0.1), loss="mse")
trainer.fit(x, y, batch_size=4, epochs=2, verbose=0,
            callbacks=[BackupAndRestore({directory!r}, save_freq=2), Crash(3)])
"""


def test_a_process_that_dies_on_an_exception_still_finishes_its_backup(tmp_path):
    # the exception leaves fit and the interpreter exits while the backup of step 2 is written:
    # the write must be finished before orbax's thread pools are shut down at exit
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _DIES.format(directory=str(tmp_path / "backup"))],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1 and "RuntimeError: crash" in done.stderr, done.stderr
    assert "orbax" not in done.stderr, done.stderr
    assert sorted(os.listdir(tmp_path / "backup")) == ["2"]
    step, tree = checkpointing.CheckpointStore(tmp_path / "backup").load()
    assert step == 2 and (tree["epoch"], tree["batch"]) == (0, 2)
