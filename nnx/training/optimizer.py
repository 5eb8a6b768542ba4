"""Optimizer: an optax transformation bound to a model, updating its parameters in place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from nnx._typing import Path, key_from_path_entry, path_order, path_str
from nnx.graph import state as graph_state
from nnx.graph import update as graph_update
from nnx.object import ARRAY_TYPES, Object
from nnx.statelib import State
from nnx.variablelib import OptState, Param, Variable

if TYPE_CHECKING:  # optax is imported when it is used: it adds ~50 ms to `import nnx`
    import optax


def _is_variable(x: Any) -> bool:
    return isinstance(x, Variable)


def _raw_state(flat: list[tuple[Path, Any]]) -> State:
    """A State of raw arrays from ``(path, leaf)`` pairs (Variables unwrapped)."""
    return State.from_flat_path(
        [(p, v.get_raw_value() if isinstance(v, Variable) else v) for p, v in flat]
    )


def _dicts_to_states(tree: Any) -> Any:
    """``tree`` with every plain dict (``inject_hyperparams``' hyperparameters, a
    ``multi_transform`` state per label) replaced by a ``State``: its containers are then all
    tuples, namedtuples or States, whose changes the structure version sees, so ``nnx.jit``
    can keep its fast path for the optimizer."""
    if type(tree) is dict:
        return State({k: _dicts_to_states(v) for k, v in tree.items()})
    if isinstance(tree, State):
        return State({k: _dicts_to_states(v) for k, v in tree.items()})
    if type(tree) is tuple:
        return tuple(_dicts_to_states(v) for v in tree)
    if isinstance(tree, tuple) and hasattr(type(tree), "_fields"):
        return type(tree)(*(_dicts_to_states(v) for v in tree))
    if type(tree) is list:
        return [_dicts_to_states(v) for v in tree]
    return tree


def _wrap_opt_state(tree: Any, param_metadata: dict[Path, tuple[tuple, dict[str, Any]]]) -> Any:
    """Wrap every array leaf of an optax state in an ``OptState`` (plain dicts become States).

    A leaf whose key path ends with a parameter's path (``mu/linear/kernel``) and has its shape
    gets that parameter's metadata (e.g. sharding annotations).
    """
    tree = _dicts_to_states(tree)

    def wrap(key_path: Any, leaf: Any) -> Any:
        if not isinstance(leaf, ARRAY_TYPES):
            return leaf
        path = tuple(key_from_path_entry(k) for k in key_path)
        for start in range(len(path)):
            meta = param_metadata.get(path[start:])
            if meta is not None and meta[0] == jnp.shape(leaf):
                return OptState(leaf, **meta[1])
        return OptState(leaf)

    return jax.tree_util.tree_map_with_path(wrap, tree)


def _pure(tree: Any) -> Any:
    """``tree`` with every Variable replaced by its raw value (States stay States)."""
    return jax.tree.map(
        lambda x: x.get_raw_value() if isinstance(x, Variable) else x, tree, is_leaf=_is_variable
    )


_SHARDING_NAMES = ("out_sharding", "sharding_names", "sharding")


def _param_metadata(params: list[tuple[Path, Any]]) -> dict[Path, tuple[tuple, dict[str, Any]]]:
    """``{path: (shape, metadata for its optimizer state)}`` of the optimized leaves.

    A parameter's ``optimizer_sharding`` becomes its optimizer state's ``out_sharding``, so the
    state can be sharded differently from the parameter.
    """
    out = {}
    for path, leaf in params:
        meta = leaf.get_metadata() if isinstance(leaf, Variable) else {}
        if "optimizer_sharding" in meta:
            meta = {k: v for k, v in meta.items() if k not in _SHARDING_NAMES}
            meta["out_sharding"] = meta.pop("optimizer_sharding")
        out[path] = (jnp.shape(leaf), meta)
    return out


class Optimizer(Object):
    """Holds an optax transformation, its state, and a reference to the model it trains.

    ``update(model, grads)`` (or ``update(grads)`` for ``optimizer.model``) computes optax
    updates for the model's state matching ``wrt`` (Variables, or raw array attributes),
    applies them in place (Variables keep their identity), increments ``step`` and returns the
    updates. The optimizer state lives in ``OptState`` Variables inside tuples, namedtuples and
    ``State``s (where optax has dicts), so the optimizer can be passed through ``nnx.jit`` and
    checkpointed with ``nnx.state(optimizer)``; it is indexed like optax's state
    (``optimizer.opt_state[0].mu['linear']['kernel']``).

    Args:
      model: the model whose parameters are optimized; kept as ``optimizer.model``.
      tx: an optax ``GradientTransformation`` (schedules, ``inject_hyperparams``,
        ``partition`` with labels from ``nnx.map_state``, line searches all work).
      wrt: a filter selecting what to optimize (default ``nnx.Param``), e.g. a type or a
        predicate ``(path, value) -> bool``.

    Example::

      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
      >>> updates = optimizer.update(model, grads)  # grads: e.g. nnx.grad(loss_fn)(model)
    """

    def __init__(self, model: Any, tx: optax.GradientTransformation, wrt: Any = Param):
        if not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise TypeError(
                f"Optimizer: tx must be an optax GradientTransformation, got {type(tx).__name__}."
            )
        self.model = model
        self.tx = tx
        self.wrt = wrt
        self.step = OptState(jnp.array(0, jnp.uint32))
        params = self._params(model)
        if not params:
            raise ValueError(
                f"Optimizer: the model {type(model).__name__} has no Variables matching "
                f"wrt={wrt!r}; nothing to optimize."
            )
        self.opt_state = _wrap_opt_state(tx.init(_raw_state(params)), _param_metadata(params))

    def _params(self, model: Any) -> list[tuple[Path, Any]]:
        return graph_state(model, self.wrt).flat_state()

    def update(self, *args: Any, **kwargs: Any) -> Any:
        """Apply one optimization step with ``grads``; return optax's updates.

        Call as ``update(model, grads, **kwargs)`` or ``update(grads, **kwargs)`` (for
        ``optimizer.model``); ``grads`` is a State or nested dict of the optimized paths, or a
        Module of gradients (what ``jax.grad`` returns for a Module). Extra keyword arguments go to ``tx.update`` with Variables
        unwrapped: ``value=loss`` for ``reduce_on_plateau``; ``value=``, ``grad=`` and
        ``value_fn=`` for line searches such as ``optax.lbfgs`` (``value_fn`` receives a State
        of arrays shaped like the optimized state). A model other than ``optimizer.model``
        (e.g. a copy made by ``jax.jit`` or ``jax.sharding.reshard``) must have the same
        optimized paths and shapes; it is updated and becomes ``optimizer.model``.

        Args:
          *args: ``grads``, or ``model, grads``.
          **kwargs: extra arguments for the optax transformation.

        Returns:
          The updates applied, a State of arrays shaped like the optimized state.
        """
        model = kwargs.pop("model", None)
        grads = kwargs.pop("grads", None)
        if len(args) == 2 and model is None and grads is None:
            model, grads = args
        elif len(args) == 1 and grads is None:
            grads = args[0]
        elif args or grads is None:
            raise TypeError(
                "Optimizer.update expects update(model, grads, **kwargs) or update(grads, "
                f"**kwargs); got {len(args)} positional argument(s)."
            )
        if model is None:
            model = self.model
        params = self._params(model)
        if model is not self.model:
            self._check_same_layout(model, params)
            self.model = model
        if not isinstance(grads, Mapping):  # e.g. the Module that jax.grad returns
            grads = graph_state(grads)
        param_tree = _raw_state(params)
        grad_tree = _raw_state([(path, self._grad_at(grads, path)) for path, _ in params])
        updates, new_opt_state = self.tx.update(
            grad_tree, _pure(self.opt_state), param_tree, **_pure(kwargs)
        )
        import optax

        graph_update(model, optax.apply_updates(param_tree, updates))
        self._write_opt_state(new_opt_state, params)
        self.step.value = self.step.value + 1
        return updates

    def _graph_forced(self, key: Any) -> str | None:
        # The model travels with the optimizer in graph mode (``optimizer.update(grads)``
        # inside nnx.jit); in tree mode it is a reference only, as Flax 0.12's Optimizer keeps
        # none: the model is passed on its own there, and a pytree cannot share its Variables.
        if key == "model":
            return "reference"
        return super()._graph_forced(key)

    def _check_same_layout(self, model: Any, params: list[tuple[Path, Any]]) -> None:
        ours = [(p, jnp.shape(v)) for p, v in self._params(self.model)]
        theirs = [(p, jnp.shape(v)) for p, v in params]
        if ours != theirs:
            mine, other = dict(ours), dict(theirs)
            diff = next(
                (p for p in sorted({*mine, *other}, key=path_order) if mine.get(p) != other.get(p)),
                (),
            )
            raise ValueError(
                f"Optimizer.update: the model passed ({type(model).__name__}) does not match the "
                f"optimizer's model ({type(self.model).__name__}) for wrt={self.wrt!r}: at "
                f"'{path_str(diff)}' the optimizer has shape {mine.get(diff, 'nothing')} and the "
                f"model has {other.get(diff, 'nothing')}. Create an Optimizer for that model."
            )

    def _grad_at(self, grads: Any, path: Path) -> Any:
        node = grads
        for key in path:
            if isinstance(node, Mapping) and key in node:
                node = node[key]
            elif isinstance(node, Mapping) and str(key) in node:
                node = node[str(key)]
            else:
                raise KeyError(
                    f"Optimizer.update: grads have no entry for the parameter "
                    f"'{path_str(path)}' (wrt={self.wrt!r}). Pass the gradients of every "
                    "optimized Variable, e.g. from nnx.grad(loss_fn)(model)."
                )
        if isinstance(node, Variable):
            node = node.get_raw_value()
        if isinstance(node, Mapping):
            raise TypeError(
                f"Optimizer.update: grads at '{path_str(path)}' is a mapping, expected an array."
            )
        return node

    def _write_opt_state(self, new_state: Any, params: list[tuple[Path, Any]]) -> None:
        new_state = _dicts_to_states(new_state)
        old_leaves, old_def = jax.tree.flatten(self.opt_state, is_leaf=_is_variable)
        new_leaves, new_def = jax.tree.flatten(new_state)
        # a raw optax state (assigned back from a checkpoint) holds arrays, not OptStates
        plain = any(isinstance(old, ARRAY_TYPES) for old in old_leaves)
        if old_def != new_def or plain:
            self.opt_state = _wrap_opt_state(new_state, _param_metadata(params))
            return
        for old, new in zip(old_leaves, new_leaves, strict=True):
            if isinstance(old, OptState):
                old.value = new


class ModelAndOptimizer(Optimizer):
    """An ``Optimizer`` whose ``update(grads)`` always updates ``optimizer.model``.

    Flax's name for the optimizer that keeps its model (``nnx.Optimizer`` keeps it too).

    Args:
      model: the model to train.
      tx: an optax ``GradientTransformation``.
      wrt: a filter selecting what to optimize (default ``nnx.Param``).
    """

    def update(self, grads: Any, /, **kwargs: Any) -> Any:  # type: ignore[override]
        """One optimization step of ``optimizer.model`` with ``grads``; returns the updates."""
        return super().update(self.model, grads, **kwargs)


__all__ = ["ModelAndOptimizer", "Optimizer"]
