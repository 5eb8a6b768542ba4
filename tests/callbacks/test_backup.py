"""BackupAndRestore: a killed run resumes exactly; grain iterator positions; callback state."""

import os
import signal
import subprocess
import sys
import time

import _backup_run
import grain
import numpy as np
import optax
import pytest

import callbacks
import checkpointing
from callbacks import BackupAndRestore, EarlyStopping, ReduceLROnPlateau
from trainer import Trainer
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
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert killed.poll() is None, f"the run ended before blocking:\n{log.read_text()}"
            assert time.monotonic() < deadline, "the run did not reach step 7 in 120 s"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
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
    data = datalib.from_user(_data_loader(), keys=datalib.BatchKeys())
    data.peek()
    batches = list(data.epoch(None))  # read to the end, as prefetching reads ahead
    data.advance(2)  # but only two were trained
    text = checkpointing.encode_iterator_state(data.position_state())
    assert text.startswith("bytes:")  # a DataLoader iterator's state is bytes
    fresh = datalib.from_user(_data_loader(), keys=datalib.BatchKeys())
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


def test_ctrl_c_keeps_a_backup_of_the_last_step_and_the_next_fit_completes_it(tmp_path, capsys):
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
    assert "interrupted" in capsys.readouterr().err
