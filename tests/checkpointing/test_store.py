"""CheckpointStore: reads wait for writes in flight, trees are checked on load, NaN is never
stored, and a failed write (a full disk) is one clear error that keeps the checkpoints before it."""

import errno
import glob
import json
import os
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest

import checkpointing
from checkpointing import (
    CheckpointReadError,
    CheckpointStore,
    CheckpointWriteError,
    NonFiniteStateError,
)


def _tree(step, value=1.0, n=4):
    return {
        "model": {"layer": {"kernel": jnp.full((n,), value, jnp.float32)}},
        "optimizer": {"0": jnp.zeros((n,), jnp.float32)},
        "step": step, "epoch": step // 2, "batch": 0,
        "rng": np.zeros((2,), np.uint32), "callbacks": {},
    }


def _edit_meta(directory, step, edit):
    path = os.path.join(directory, str(step), "meta", "metadata")
    with open(path) as f:
        meta = json.load(f)
    meta = edit(meta)
    with open(path, "w") as f:
        f.write(meta if isinstance(meta, str) else json.dumps(meta))


def test_a_read_by_another_store_waits_for_the_write_in_flight(tmp_path):
    writer = CheckpointStore(tmp_path)
    writer.save(2, _tree(2))  # in the background
    step, tree = CheckpointStore(tmp_path).load()  # a rerun's store: it waits, then reads
    assert step == 2 and tree["callbacks"] == {}  # an empty mapping comes back
    np.testing.assert_array_equal(np.asarray(tree["model"]["layer"]["kernel"]), np.ones(4))
    assert writer.steps() == [2]


def test_a_non_finite_state_is_never_saved(tmp_path):
    store = CheckpointStore(tmp_path, max_to_keep=1, owner="Trainer.save")
    store.save(1, _tree(1))
    bad = _tree(2)
    bad["optimizer"]["0"] = jnp.array([0.0, jnp.inf, 0.0, 0.0])
    bad["model"]["layer"]["kernel"] = jnp.full((4,), jnp.nan)
    with pytest.raises(NonFiniteStateError, match=r"Trainer.save: the state at step 2 holds NaN or infinite "
                       r"values in model/layer/kernel, optimizer/0; it is not saved"):
        store.save(2, bad)
    assert isinstance(NonFiniteStateError("x"), ValueError)
    assert store.steps() == [1]
    assert checkpointing.nonfinite_paths(_tree(3)) == []


def test_metadata_that_disagrees_with_the_directory_falls_back_with_a_warning(tmp_path):
    store = CheckpointStore(tmp_path)
    for step in (4, 8, 12):
        store.save(step, _tree(step, value=float(step)))
    store.close()
    _edit_meta(tmp_path, 12, lambda meta: {**meta, "step": 7})
    _edit_meta(tmp_path, 8, lambda meta: "{}")  # an empty metadata file
    with pytest.warns(UserWarning) as seen:
        step, tree = store.load()
    assert step == 4 and tree["step"] == 4
    np.testing.assert_array_equal(np.asarray(tree["model"]["layer"]["kernel"]), np.full(4, 4.0))
    messages = [str(w.message) for w in seen]
    assert len(messages) == 2
    assert "checkpoint 12 in" in messages[0] and "its metadata says step 7 but it is checkpoint 12" in messages[0]
    assert "checkpoint 8 in" in messages[1] and "it has no 'step'; it has no 'epoch'" in messages[1]
    assert all(m.endswith("using checkpoint 4 instead") for m in messages)


def test_no_checkpoint_and_no_usable_checkpoint_are_different_answers(tmp_path):
    assert CheckpointStore(tmp_path / "empty").load() is None
    store = CheckpointStore(tmp_path / "run", owner="BackupAndRestore")
    store.save(3, _tree(3))
    store.save(6, {**_tree(6), "data": "json:{\"next_index\": 8}"})
    store.close()
    _edit_meta(tmp_path / "run", 6, lambda meta: {**meta, "data": "bytes:%%%"})
    _edit_meta(tmp_path / "run", 3, lambda meta: {**meta, "epoch": "one", "step": True})
    with pytest.raises(CheckpointReadError) as raised:
        store.load()
    message = str(raised.value)
    assert f"BackupAndRestore: {tmp_path / 'run'} holds checkpoints, but none of the checkpoints [3, 6] can be used" in message
    assert "checkpoint 6 cannot be used (the data-iterator state 'bytes:%%%' cannot be decoded" in message
    assert "checkpoint 3 cannot be used (its 'step' is True, not an int >= 0; its 'epoch' is 'one'" in message
    with pytest.raises(CheckpointReadError, match=r"but checkpoint 3 can be used: checkpoint 3 cannot be used"):
        store.load(3)


def _fail_commits(monkeypatch):
    """Make orbax's commit of a checkpoint (the marker file written, in its background thread,
    once the arrays are written) fail as a full disk does."""
    from orbax.checkpoint._src.path import async_path

    write_text = async_path.write_text

    async def full(path, text):
        if os.path.basename(str(path)) == "commit_success.txt":
            raise OSError(errno.ENOSPC, "No space left on device")
        return await write_text(path, text)

    monkeypatch.setattr(async_path, "write_text", full)


def test_a_failed_background_write_is_raised_at_the_next_call_and_leaves_nothing_behind(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, max_to_keep=1, owner="ModelCheckpoint")
    store.save(1, _tree(1))
    store.wait()
    with monkeypatch.context() as patch:
        _fail_commits(patch)
        try:
            store.save(2, _tree(2))  # the failure may surface here or at the wait
            store.wait()
        except CheckpointWriteError as error:
            failure = error
        else:
            pytest.fail("the failed write raised nothing")
    message = str(failure)
    assert f"ModelCheckpoint: writing checkpoint 2 to {tmp_path / '2'} failed (OSError: [Errno 28] No space left" in message
    assert "The disk is full. It needs about" in message and "the checkpoints [1] are kept" in message
    assert failure.errno == errno.ENOSPC and isinstance(failure, OSError)
    assert glob.glob(str(tmp_path / "*orbax-checkpoint-tmp*")) == []  # the partial write is gone
    assert store.steps() == [1] and store.load()[0] == 1  # and the previous checkpoint is intact
    store.save(3, _tree(3))  # the store works again once there is room
    assert store.steps() == [3]


def test_a_nearly_full_disk_makes_the_save_wait_so_the_failing_save_raises(tmp_path, monkeypatch):
    from checkpointing import store as storelib

    store = CheckpointStore(tmp_path)
    store.save(1, _tree(1))
    store.wait()
    monkeypatch.setattr(storelib, "_free_bytes", lambda directory: 1000)  # less than twice the size
    _fail_commits(monkeypatch)
    with pytest.raises(CheckpointWriteError, match=r"writing checkpoint 2 .* 1.0 KB were free when it started"):
        store.save(2, _tree(2))
    assert store._pending is None and store.steps() == [1]


def _tmpfs(path, size):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    os.makedirs(path)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


# When a real write fails, tensorstore may still complete writes of orbax's closed event loop
# ("RuntimeError: Event loop is closed", reported as unraisable): orbax's, not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_really_full_disk(tmp_path, capfd):
    disk = tmp_path / "disk"
    _tmpfs(disk, "160k")
    try:
        store = CheckpointStore(disk / "ckpt")
        random = np.random.default_rng(0).normal(size=(30_000,)).astype(np.float32)  # 120 KB, incompressible
        store.save(1, _tree(1, n=30_000))  # zeros: a few KB once compressed
        with pytest.raises(CheckpointWriteError, match=r"(?s)writing checkpoint 2 .*The disk is full.* the checkpoints \[1\] are kept"):
            store.save(2, {**_tree(2, n=30_000), "model": {"layer": {"kernel": jnp.asarray(random)}}})
        assert store.steps() == [1] and os.listdir(disk / "ckpt") == ["1"]
        store.close()
        assert "orbax/checkpoint" not in capfd.readouterr().err  # no traceback through orbax's code
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_joining_a_failed_orbax_thread_does_not_raise_its_error():
    """orbax's background threads re-raise their error from ``join``; the store reports the
    failed write itself (CheckpointWriteError), so the join must not raise past it."""
    import threading
    import time

    from checkpointing import store

    class Failed(threading.Thread):
        def join(self, timeout=None):
            super().join(timeout)
            raise ValueError("RESOURCE_EXHAUSTED: the write's own error")

    Failed.__module__ = "orbax.checkpoint._src.futures.future"  # how the store recognizes them
    thread = Failed(target=lambda: time.sleep(0.2))  # alive while the store looks for it
    thread.start()
    try:
        store._join_orbax_threads(timeout=1.0)  # raised ValueError before
    finally:
        threading.Thread.join(thread)
