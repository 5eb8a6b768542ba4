"""The live state of a ``fit`` / ``evaluate`` / ``predict`` call, and the user's model kept in
step with it.

Between compiled calls the state is kept as the flat leaves the steps take and return; the
nested ``TrainState`` is rebuilt only when something reads it (a hook, the end of an epoch).
Before a callback runs the state is written into the user's Variables (``sync``); after it, values
a callback wrote into the model (restored weights, say) are taken back (``pull_changes``).
"""

from __future__ import annotations

from typing import Any

import jax

import nnx
from trainer import model_state
from trainer.model_state import ModelSpec, TrainState


def _current(variables: tuple[Any, ...]) -> list[Any]:
    return [v.get_value() if isinstance(v, nnx.Variable) else v for v in variables]


class Session:
    """The state of one call over ``model`` split by ``spec``.

    Args:
      spec: the split model.
      saved_mode: the model's mode attributes before the call, put back by ``close``.
      state: the initial state.
      training: whether this is a training call (its parameters are donated copies).
    """

    def __init__(self, spec: ModelSpec, saved_mode: list[Any], state: TrainState, training: bool):
        self.spec = spec
        self.saved_mode = saved_mode
        self.training = training
        self._tree: TrainState | None = state
        self._leaves: list[Any] | None = None
        self._treedef: Any = None
        self._written = _current(spec.variables)
        self._dirty = False  # the state holds values the model does not have yet

    # -- the state ----------------------------------------------------------------------
    @property
    def state(self) -> TrainState:
        if self._tree is None:
            self._tree = jax.tree.unflatten(self._treedef, self._leaves)
        return self._tree

    @state.setter
    def state(self, state: TrainState) -> None:
        self._tree, self._leaves, self._dirty = state, None, True

    def flat(self) -> tuple[list[Any], Any]:
        """The state's leaves and treedef."""
        if self._leaves is None:
            self._leaves, self._treedef = jax.tree.flatten(self._tree)
        return self._leaves, self._treedef

    def set_flat(self, leaves: list[Any]) -> None:
        """Replace the state by leaves of the same structure."""
        self._leaves, self._tree, self._dirty = leaves, None, True

    # -- the user's model ---------------------------------------------------------------
    def sync(self) -> None:
        """Write the state into the user's Variables (in place, identities kept), when it holds
        values they do not have: a value a callback wrote since is not overwritten."""
        if not self._dirty:
            return
        state = self.state
        model_state.write_back(self.spec, state.params, state.others)
        self._written = _current(self.spec.variables)
        self._dirty = False

    def pull_changes(self, copy: bool) -> None:
        """Take back the values a callback wrote into the model since the last ``sync``."""
        variables = self.spec.variables
        if all(not isinstance(v, nnx.Variable) or v.get_value() is w for v, w in zip(variables, self._written, strict=True)):
            return
        params, others = model_state.initial_arrays(self.spec, copy=copy)
        self.state = self.state._replace(params=params, others=others)
        self._written = _current(variables)
        self._dirty = False

    def reload(self, copy: bool) -> None:
        """Read the model's current values into the state (after a checkpoint was loaded)."""
        self._written = [None] * len(self._written)
        self.pull_changes(copy)

    def close(self) -> None:
        """Write the state back (unless its buffers were given away) and restore the mode."""
        params = jax.tree.leaves(self.state.params)
        if not any(getattr(a, "is_deleted", lambda: False)() for a in params):
            self.sync()
        model_state.restore_mode(self.saved_mode)
