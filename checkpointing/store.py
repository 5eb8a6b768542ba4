"""Orbax storage of Trainer checkpoints, shared by ``Trainer.save`` / ``Trainer.restore``,
ModelCheckpoint and BackupAndRestore.

A checkpoint tree (``Trainer.checkpoint_state()``) mixes arrays with plain Python values. Each
checkpoint is one numbered subdirectory of a directory managed by orbax-checkpoint's
``CheckpointManager``, holding two items: ``state`` (the arrays, ``StandardSave``) and ``meta``
(the Python values as JSON). Orbax writes into a temporary directory renamed when complete, so an
interrupted write never replaces the last good checkpoint; reading skips, with a warning, any
checkpoint that fails to load and falls back to the one before.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import orbax.checkpoint as ocp


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
    """Nested mappings split into arrays (for orbax) and JSON values; empty mappings vanish."""
    arrays: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            sub_arrays, sub_scalars = split_tree(value)
            if sub_arrays:
                arrays[key] = sub_arrays
            if sub_scalars:
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

    @property
    def manager(self) -> ocp.CheckpointManager:
        """The orbax ``CheckpointManager`` (created, with the directory, on first use)."""
        if self._manager is None:
            ocp = _orbax()
            options = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True)
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def steps(self) -> list[int]:
        """The numbers of the checkpoints on disk, oldest first (re-read from the directory)."""
        if self._manager is None and not os.path.isdir(self.directory):
            return []
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, tree: Mapping[str, Any]) -> None:
        """Write ``tree`` as checkpoint ``step`` (in the background where orbax allows).

        Checkpoints numbered ``step`` or higher are deleted first: they belong to a run that was
        abandoned (a resumed run is writing its own future), and orbax would otherwise refuse a
        step lower than its newest.
        """
        manager = self.manager
        stale = [old for old in manager.all_steps() if old >= step]
        if stale:
            manager.wait_until_finished()  # one of them may still be being written
            for old in stale:
                manager.delete(old)
        ocp = _orbax()
        arrays, scalars = split_tree(_string_keys(dict(tree)))
        manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(scalars)),
            force=True,
        )

    def load(self, step: int | None = None) -> tuple[int, dict[str, Any]] | None:
        """``(step, tree)`` of the newest readable checkpoint (or of ``step``); None when empty.

        A checkpoint that fails to load is skipped with a warning and the one before it is
        tried; an explicit ``step`` that fails raises.
        """
        candidates = sorted(self.steps(), reverse=True)
        if step is not None:
            if step not in candidates:
                raise FileNotFoundError(
                    f"{self.owner}: step {step} is not in {self.directory}; it has {sorted(candidates)}"
                )
            candidates = [step]
        ocp = _orbax()
        for candidate in candidates:
            try:
                restored = self.manager.restore(
                    candidate,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
                )
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is skipped
                if step is not None:
                    raise
                warnings.warn(
                    f"{self.owner}: checkpoint {candidate} in {self.directory} cannot be read "
                    f"({type(error).__name__}: {error}); trying the previous one",
                    stacklevel=2,
                )
                continue
            return candidate, merge_trees(restored.state or {}, restored.meta or {})
        return None

    def wait(self) -> None:
        """Block until background writes are complete."""
        if self._manager is not None:
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish writes and release orbax's resources (the manager is re-created on next use)."""
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None

    def delete_all(self) -> None:
        """Remove every checkpoint and the directory itself."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)
