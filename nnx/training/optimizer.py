"""Optimizer: an optax transformation bound to a model, updating its parameters in place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nnx._typing import Path, key_from_path_entry, path_str
from nnx.graph import state as graph_state
from nnx.object import ARRAY_TYPES, Object
from nnx.statelib import State
from nnx.variablelib import OptState, Param, Variable


def _is_variable(x: Any) -> bool:
    return isinstance(x, Variable)


def _unwrap(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.value if isinstance(x, Variable) else x, tree, is_leaf=_is_variable)


def _raw_state(flat: list[tuple[Path, Any]]) -> State:
    """A State of raw arrays from ``(path, leaf)`` pairs (Variables unwrapped)."""
    return State.from_flat_path([(p, v.value if isinstance(v, Variable) else v) for p, v in flat])


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


def _wrap_opt_state(tree: Any, param_metadata: dict[Path, dict[str, Any]]) -> Any:
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


class Optimizer(Object):
    """Holds an optax transformation, its state, and a reference to the model it trains.

    ``update(grads)`` (or ``update(model, grads)``) computes optax updates for the model's
    Variables matching ``wrt``, applies them in place (the Variables keep their identity) and
    increments ``step``. The optimizer state lives in ``OptState`` Variables, so the optimizer
    can be passed through ``nnx.jit`` and checkpointed with ``nnx.state(optimizer)``.

    Args:
      model: the model whose parameters are optimized; kept as ``optimizer.model``.
      tx: an optax ``GradientTransformation`` (schedules and ``inject_hyperparams`` work).
      wrt: a filter selecting the Variables to optimize (default ``nnx.Param``).

    Example::

      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1))
      >>> optimizer.update(grads)  # grads: a State or nested dict matching the Params
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
        params = self._params()
        if not params:
            raise ValueError(
                f"Optimizer: the model {type(model).__name__} has no Variables matching "
                f"wrt={wrt!r}; nothing to optimize."
            )
        metadata = {path: (var.shape, var.get_metadata()) for path, var in params}
        self.opt_state = _wrap_opt_state(tx.init(_raw_state(params)), metadata)

    def _params(self) -> list[tuple[Path, Variable]]:
        return graph_state(self.model, self.wrt).flat_state()

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Apply one optimization step with ``grads``.

        Call as ``update(grads, **kwargs)`` or ``update(model, grads, **kwargs)``; extra keyword
        arguments go to ``tx.update`` (e.g. ``value=loss`` for ``reduce_on_plateau``).

        Args:
          *args: ``grads``, or ``model, grads`` where ``model`` must be ``optimizer.model``.
          **kwargs: extra arguments for the optax transformation.
        """
        model = kwargs.pop("model", None)
        grads = kwargs.pop("grads", None)
        if len(args) == 2 and model is None and grads is None:
            model, grads = args
        elif len(args) == 1 and grads is None:
            grads = args[0]
        elif args or grads is None:
            raise TypeError(
                "Optimizer.update expects update(grads, **kwargs) or update(model, grads, "
                f"**kwargs); got {len(args)} positional argument(s)."
            )
        if model is not None and model is not self.model:
            raise ValueError(
                f"Optimizer.update: the model passed ({type(model).__name__} at "
                f"{id(model):#x}) is not the model this optimizer was created with "
                f"({type(self.model).__name__} at {id(self.model):#x}). Create an Optimizer "
                "for that model instead."
            )
        params = self._params()
        param_tree = _raw_state(params)
        grad_tree = _raw_state([(path, self._grad_at(grads, path)) for path, _ in params])
        opt_state = _unwrap(self.opt_state)
        updates, new_opt_state = self.tx.update(grad_tree, opt_state, param_tree, **kwargs)
        new_params = optax.apply_updates(param_tree, updates)
        flat_new = State.flatten_mapping(new_params)
        for path, var in params:
            var.value = flat_new[path]
        self._write_opt_state(new_opt_state)
        self.step.value = self.step.value + 1

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
            node = node.value
        if isinstance(node, Mapping):
            raise TypeError(
                f"Optimizer.update: grads at '{path_str(path)}' is a mapping, expected an array."
            )
        return node

    def _write_opt_state(self, new_state: Any) -> None:
        new_state = _dicts_to_states(new_state)
        old_leaves, old_def = jax.tree.flatten(self.opt_state, is_leaf=_is_variable)
        new_leaves, new_def = jax.tree.flatten(new_state)
        # a raw optax state (assigned back from a checkpoint) holds arrays, not OptStates
        plain = any(isinstance(old, ARRAY_TYPES) for old in old_leaves)
        if old_def != new_def or plain:
            metadata = {path: (var.shape, var.get_metadata()) for path, var in self._params()}
            self.opt_state = _wrap_opt_state(new_state, metadata)
            return
        for old, new in zip(old_leaves, new_leaves, strict=True):
            if isinstance(old, OptState):
                old.value = new


__all__ = ["Optimizer"]
