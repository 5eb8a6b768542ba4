"""Orbax storage of Trainer checkpoints, shared by ``Trainer.save`` / ``Trainer.restore``,
ModelCheckpoint and BackupAndRestore.

A checkpoint tree (``Trainer.checkpoint_state()``) mixes arrays with plain Python values. Each
checkpoint is one numbered subdirectory of a directory managed by orbax-checkpoint's
``CheckpointManager``, holding two items: ``state`` (the arrays, ``StandardSave``) and ``meta``
(the Python values as JSON). Orbax writes into a temporary directory renamed when complete, so an
interrupted write never replaces the last good checkpoint.

Writes run in the background. A failed write (a full disk, say) raises ``CheckpointWriteError``
at the next ``save``, ``wait``, ``steps``, ``load`` or ``close`` of the store, naming the
checkpoint's path; its temporary directory is removed and the checkpoints before it are kept.
When the disk has less than twice the checkpoint's size free, ``save`` waits for the write, so
that the failure, if it comes, is raised by the save that caused it. Reading waits for the writes
in flight to the same directory (a rerun after an exception reads the backup its crashed run was
writing), and the interpreter finishes them before it exits (a script that dies on an exception
keeps the backup it was writing). Reading checks each tree (``tree_problems``) and falls back,
with a warning naming what was wrong, to the checkpoint before; when none can be used,
``CheckpointReadError`` names each one.
No checkpoint stores a NaN or an infinity: ``save`` raises ``NonFiniteStateError`` instead.
"""

from __future__ import annotations

import atexit
import dataclasses
import errno as errnolib
import glob
import json
import logging
import os
import re
import shutil
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jax

from checkpointing.state import nonfinite_paths, tree_problems

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

logger = logging.getLogger("checkpointing")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (its partial write was removed; earlier ones are kept).

    ``errno`` is the error number of the underlying OSError when there is one (``ENOSPC``).
    """


class CheckpointReadError(ValueError):
    """A directory holds checkpoints, but none of them (or not the one asked for) can be used."""


class NonFiniteStateError(ValueError):
    """The model or optimizer state holds NaN or infinite values; it is never saved."""


def _orbax() -> Any:
    """orbax.checkpoint, imported on first use (it takes a tenth of a second to import)."""
    import orbax.checkpoint

    return orbax.checkpoint


def _string_keys(tree: Any) -> Any:
    """The same nested mappings with every key a string (orbax names files after keys)."""
    if isinstance(tree, Mapping):
        return {str(k): _string_keys(v) for k, v in tree.items()}
    return tree


def _is_json(value: Any) -> bool:
    """Whether ``value`` is a Python scalar, or a list / tuple of such values (nested)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_is_json(v) for v in value)
    return False


def split_tree(tree: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Nested mappings split into arrays (for orbax) and JSON values; an empty mapping is kept
    as an empty JSON object (so that ``callbacks: {}`` comes back)."""
    arrays: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            sub_arrays, sub_scalars = split_tree(value)
            if sub_arrays:
                arrays[key] = sub_arrays
            if sub_scalars or not sub_arrays:
                scalars[key] = sub_scalars
        elif _is_json(value):
            scalars[key] = list(value) if isinstance(value, tuple) else value
        else:
            arrays[key] = value
    return arrays, scalars


def merge_trees(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """The nested union of the two halves made by ``split_tree``."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_trees(out[key], value)
        else:
            out[key] = value
    return out


# -- writes in flight and their errors --------------------------------------------------

# Orbax's own files beside each step directory while it is written.
_TEMPORARY = ".orbax-checkpoint-tmp"
# What orbax writes besides the arrays (metadata files, the JSON item), about.
_OVERHEAD_BYTES = 128 * 1024

# The stores writing to each directory (held until their write is waited for, even when
# nothing else holds them), so that a read waits for every write in flight to it.
_WRITING: dict[str, set[CheckpointStore]] = {}
_quiet = 0  # > 0 while a store handles a failed write: orbax's tracebacks are shortened


@dataclasses.dataclass(frozen=True)
class _Write:
    step: int
    path: str
    estimate: int  # bytes before compression
    free: int | None  # bytes free on the disk when the write started


class _OrbaxTracebacks(logging.Filter):
    """Orbax's error records about a write of a store (on the ``absl`` and ``asyncio``
    loggers): their tracebacks are dropped while the write is in flight or being handled (the
    store raises the error itself, once, with the checkpoint's path), and records still coming
    about a write already reported (abandoned parts collected at exit) are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        error = record.exc_info[1]
        text = f"{record.getMessage()} {error}"
        if any(f"{path}{_TEMPORARY}" in text or f"{path}/" in text for path in _REPORTED):
            return False
        if "orbax" in record.pathname and (_quiet or _writing()):
            record.msg = f"{record.getMessage()} ({type(error).__name__}: {error}; raised by checkpointing)"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


_FILTER = _OrbaxTracebacks()
_REPORTED: set[str] = set()  # the paths of the failed writes already raised


def _filter_orbax_records() -> None:
    for name in ("absl", "asyncio"):
        if _FILTER not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_FILTER)


def _finish_all_writes() -> None:
    """At exit (a ``fit`` that died on an exception, say): finish every write in flight."""
    for directory in list(_WRITING):
        try:
            _finish_writes(directory)
        except Exception:  # noqa: BLE001 - the interpreter is exiting: log, never raise
            logger.exception("finishing the checkpoint writes to %s at exit", directory)


_exit_hook = False


def _finish_writes_at_exit() -> None:
    """Make the interpreter finish the writes in flight before it exits. ``atexit`` runs too
    late: by then the thread pools orbax writes with are shut down and a write in flight is
    lost. ``threading._register_atexit`` (what ``concurrent.futures`` uses; later
    registrations run first) runs before them."""
    global _exit_hook
    if _exit_hook:
        return
    _exit_hook = True
    register = getattr(threading, "_register_atexit", None)
    (register or atexit.register)(_finish_all_writes)


def _writing() -> bool:
    return any(_WRITING.values())


def _finish_writes(directory: str, exclude: CheckpointStore | None = None) -> None:
    """Wait for the writes in flight to ``directory`` by other stores of this process; their
    failures are logged (the store that wrote raises its own)."""
    for store in list(_WRITING.get(directory, ())):
        if store is exclude:
            continue
        try:
            store.wait()
        except CheckpointWriteError as error:
            logger.error("%s", error)


def _join_orbax_threads(timeout: float) -> None:
    """Wait (up to ``timeout`` seconds) for orbax's background threads of a failed write: its
    other parts may still be writing after the first one failed. orbax's threads re-raise
    their own error from ``join``; that error belongs to the write being reported already."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and type(thread).__module__.startswith("orbax"):
            try:
                thread.join(max(deadline - time.monotonic(), 0.0))
            except Exception:  # noqa: BLE001
                logger.debug("an orbax thread of the failed write ended with an error", exc_info=True)


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _free_bytes(directory: str) -> int | None:
    path = directory
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _estimated_bytes(arrays: Any, scalars: Any) -> int:
    import jax

    total = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(arrays))
    return total + len(json.dumps(scalars, default=str)) + _OVERHEAD_BYTES


def _errno(error: BaseException | None) -> int | None:
    """The OS error number behind ``error``: an OSError's, or tensorstore's ``os_error_code``."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return error.errno
        found = re.search(r"os_error_code='(\d+)'", str(error))
        if found:
            return int(found.group(1))
        error = error.__cause__ or error.__context__
    return None


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 300 else text[:300] + " ..."


class CheckpointStore:
    """Numbered checkpoints of Trainer trees in ``directory`` (orbax ``CheckpointManager``).

    Args:
      directory: the directory holding one subdirectory per checkpoint.
      max_to_keep: keep only the newest this many (None: all).
      owner: the name used in messages and warnings (e.g. ``"ModelCheckpoint"``).
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = None, owner: str = "checkpoint"):
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_to_keep = max_to_keep
        self.owner = owner
        self._manager: Any = None
        self._pending: _Write | None = None

    @property
    def manager(self) -> ocp.CheckpointManager:
        """The orbax ``CheckpointManager`` (created, with the directory, on first use; the
        temporary directories of writes that never finished are removed then)."""
        if self._manager is None:
            _finish_writes(self.directory, exclude=self)
            ocp = _orbax()
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.max_to_keep, create=True, cleanup_tmp_directories=True
            )
            handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        return self._manager

    def steps(self) -> list[int]:
        """The numbers of the checkpoints on disk, oldest first (re-read from the directory,
        once the writes in flight to it are finished)."""
        self.wait()
        _finish_writes(self.directory, exclude=self)
        if self._manager is None and not os.path.isdir(self.directory):
            return []
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, tree: Mapping[str, Any], *, replace: Iterable[int] = ()) -> None:
        """Write ``tree`` as checkpoint ``step`` (in the background unless the disk is nearly full).

        Raises ``NonFiniteStateError`` (nothing written, nothing deleted) when the tree's model
        or optimizer arrays hold NaN or infinite values, and ``CheckpointWriteError`` when this
        write or the previous one failed. The checkpoints ``replace`` and those numbered
        ``step`` or higher are deleted first: the latter belong to a run that was abandoned (a
        resumed run is writing its own future), and orbax would otherwise refuse a step lower
        than its newest.
        """
        self.wait()  # the previous write: a failure is raised here, naming its checkpoint
        bad = nonfinite_paths(tree)
        if bad:
            raise NonFiniteStateError(
                f"{self.owner}: the state at step {step} holds NaN or infinite values in "
                f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; it is not saved (the "
                f"checkpoints in {self.directory} are kept)."
            )
        replace = set(replace)
        if replace:
            self.delete_steps(sorted(replace))
        manager = self.manager
        for old in [old for old in manager.all_steps() if old >= step]:
            manager.delete(old)
        ocp = _orbax()
        arrays, scalars = split_tree(_string_keys(dict(tree)))
        _filter_orbax_records()
        _finish_writes_at_exit()
        estimate, free = _estimated_bytes(arrays, scalars), _free_bytes(self.directory)
        self._pending = _Write(int(step), os.path.join(self.directory, str(step)), estimate, free)
        _WRITING.setdefault(self.directory, set()).add(self)
        try:
            manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(scalars)),
                force=True,
            )
        except Exception as error:  # noqa: BLE001 - every failed write is reported the same way
            self._failed(error)
        if free is not None and free < 2 * estimate:
            self.wait()  # a nearly full disk: a failure is raised by this save

    def wait(self) -> None:
        """Block until the background write is complete; raises ``CheckpointWriteError`` when
        it failed (once: the store is usable again afterwards)."""
        if self._pending is None:
            return
        try:
            if self._manager is not None:
                self._manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001
            self._failed(error)
        if not os.path.isdir(self._pending.path):
            self._failed(None)
        self._pending = None
        _WRITING.get(self.directory, set()).discard(self)

    def _failed(self, error: BaseException | None) -> None:
        """Abandon the failed write: remove what it left, forget the manager, raise."""
        global _quiet
        write, self._pending = self._pending, None
        assert write is not None
        _WRITING.get(self.directory, set()).discard(self)
        _quiet += 1
        try:
            manager, self._manager = self._manager, None
            _join_orbax_threads(timeout=30.0)
            if manager is not None:
                try:
                    manager.close()  # re-raises the write's error: already being reported
                except Exception:  # noqa: BLE001
                    logger.debug("closing the failed CheckpointManager of %s", self.directory, exc_info=True)
            for leftover in glob.glob(glob.escape(write.path) + _TEMPORARY + "*") + [write.path]:
                shutil.rmtree(leftover, ignore_errors=True)
        finally:
            _quiet -= 1
        kept = sorted(
            int(name) for name in (os.listdir(self.directory) if os.path.isdir(self.directory) else ())
            if name.isdigit()
        )
        cause = _short(error) if error is not None else "orbax reported no error, but it is not on disk"
        code = _errno(error)
        need = f"It needs about {_size(write.estimate)} before compression; {_size(write.free)} were free when it started."
        if code == errnolib.ENOSPC:
            need = "The disk is full. " + need
        failure = CheckpointWriteError(
            f"{self.owner}: writing checkpoint {write.step} to {write.path} failed ({cause}). {need} "
            f"The partial write was removed; "
            + (f"the checkpoints {kept} are kept. " if kept else f"{self.directory} holds no earlier checkpoint. ")
            + "Free some space or choose another directory."
        )
        failure.errno = code
        _REPORTED.add(write.path)
        raise failure from error

    def _target(self, step: int, shardings: Any = None) -> Any:
        """The saved arrays' shapes and dtypes, each to be read with the sharding
        ``shardings(path, shape)`` gives (a tuple of string keys; None: this process's first
        device): a checkpoint written on any mesh loads on any other, where orbax alone refuses
        another topology, and a sharded model is read straight into its shards."""
        saved = self.manager.item_metadata(step)["state"]
        if saved is None:
            return None
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def abstract(path: Any, leaf: Any) -> Any:
            if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
                return leaf
            keys = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            sharding = shardings(keys, tuple(leaf.shape)) if shardings is not None else None
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding or device)

        return jax.tree_util.tree_map_with_path(abstract, saved, is_leaf=lambda x: hasattr(x, "shape"))

    def load(self, step: int | None = None, shardings: Any = None) -> tuple[int, dict[str, Any]] | None:
        """``(step, tree)`` of the newest usable checkpoint (or of ``step``); None when there is none.

        Each tree is checked (``checkpointing.tree_problems``: required keys, types, its step
        against the directory's). One that fails to read or to check is skipped, with a
        warning naming what was wrong, and the one before it is tried. Raises
        ``CheckpointReadError`` naming each failure when checkpoints exist but none can be
        used, or when an explicit ``step`` cannot be. ``shardings(path, shape)`` places each
        array as it is read (the Trainer's ``checkpoint_shardings()``; None: on this process's
        first device).
        """
        candidates = sorted(self.steps(), reverse=True)
        if step is not None:
            if step not in candidates:
                raise FileNotFoundError(
                    f"{self.owner}: step {step} is not in {self.directory}; it has {sorted(candidates)}"
                )
            candidates = [step]
        ocp = _orbax()
        failures: list[tuple[int, str]] = []  # (step, "cannot be read (why)"), newest first
        for candidate in candidates:
            try:
                restored = self.manager.restore(
                    candidate,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(self._target(candidate, shardings)), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is skipped
                failures.append((candidate, f"cannot be read ({type(error).__name__}: {error})"))
                continue
            tree = merge_trees(restored.state or {}, restored.meta or {})
            problems = tree_problems(tree, candidate)
            if problems:
                failures.append((candidate, f"cannot be used ({'; '.join(problems)})"))
                continue
            for failed, why in failures:
                warnings.warn(
                    f"{self.owner}: checkpoint {failed} in {self.directory} {why}; using checkpoint "
                    f"{candidate} instead",
                    stacklevel=2,
                )
            return candidate, tree
        if not candidates:
            return None
        which = f"checkpoint {step}" if step is not None else f"none of the checkpoints {sorted(candidates)}"
        raise CheckpointReadError(
            f"{self.owner}: {self.directory} holds checkpoints, but {which} can be used: "
            + "; ".join(f"checkpoint {failed} {why}" for failed, why in failures)
            + ". Remove the damaged ones (or the directory, to start fresh)."
        )

    def delete_steps(self, steps: list[int]) -> None:
        """Delete the checkpoints numbered ``steps`` (those that exist)."""
        existing = set(self.steps())
        for step in steps:
            if step in existing:
                self.manager.delete(step)

    def close(self) -> None:
        """Finish writes and release orbax's resources (the manager is re-created on next use)."""
        self.wait()
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def delete_all(self) -> None:
        """Remove every checkpoint and the directory itself (a failed last write is ignored)."""
        try:
            self.close()
        except CheckpointWriteError as error:
            logger.info("%s (the directory is being deleted anyway)", error)
        _finish_writes(self.directory, exclude=self)
        shutil.rmtree(self.directory, ignore_errors=True)
