"""Lift any JAX transform over graph nodes by hand: ``split_inputs`` outside the transform,
``merge_inputs`` inside it.

``split_inputs(f)`` calls ``f`` with the graph nodes of its arguments as pure trees
(``nnx.to_tree``); ``f`` is a JAX transform of a function wrapped in ``merge_inputs``, which
rebuilds the objects, runs the function, and returns ``(inputs, output)`` as pure trees (the
inputs with their non-node leaves set to None). ``split_inputs`` then writes the inputs' new
state into the caller's objects and returns the output. A transform with output axes (``vmap``'s
``out_axes``) must therefore describe that pair: ``out_axes=(in_axes, out_axes)``. The nnx
transforms (``nnx.jit``, ``nnx.vmap``, ``nnx.cond``, ...) do all this for you.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from nnx._contexts import update_context
from nnx._node_states import clear_non_graph_nodes, from_tree, to_tree

F = TypeVar("F", bound=Callable[..., Any])
CTXTAG = "split_merge_inputs"


def split_inputs(f: F | None = None, *, ctxtag: Hashable = CTXTAG) -> Any:
    """``f`` (a JAX transform of a ``merge_inputs`` function) over graph-node arguments; the
    state changes made inside are written back to the arguments. Usable as a decorator, with
    or without ``ctxtag``."""
    if f is None:
        return functools.partial(split_inputs, ctxtag=ctxtag)

    @functools.wraps(f)
    def split_inputs_wrapper(*args: Any) -> Any:
        with update_context(ctxtag):
            pure_args = to_tree(args, ctxtag=ctxtag)
            pure_args_out, pure_out = f(*pure_args)
            _, out = from_tree((pure_args_out, pure_out), ctxtag=ctxtag, is_inner=False)
        return out

    return split_inputs_wrapper


def merge_inputs(f: F | None = None, *, ctxtag: Hashable = CTXTAG) -> Any:
    """``f`` on the pure trees ``split_inputs`` passes: the objects are rebuilt, ``f`` runs,
    and ``(inputs, output)`` come back as pure trees (see the module docstring)."""
    if f is None:
        return functools.partial(merge_inputs, ctxtag=ctxtag)

    @functools.wraps(f)
    def merge_inputs_wrapper(*pure_args: Any) -> tuple[Any, Any]:
        args = from_tree(pure_args, ctxtag=ctxtag, is_inner=True)
        out = f(*args)
        return to_tree((clear_non_graph_nodes(args), out), ctxtag=ctxtag)

    return merge_inputs_wrapper
