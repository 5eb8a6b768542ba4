"""``tabulate`` / ``summary``: a per-module table of calls, shapes, parameter counts and bytes.

With inputs, the model is run under ``jax.eval_shape`` on a copy rebuilt from its State (so the
model itself is never changed and nothing is computed); every module call is recorded by
temporarily wrapping the ``__call__`` of the module classes involved.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from nnx._display import format_bytes
from nnx._typing import Path, path_order
from nnx.graph import merge, split
from nnx.graph import state as graph_state
from nnx.module import Module
from nnx.variablelib import Param, RngState, Variable


def _format_count(count: int, nbytes: int) -> str:
    return f"{count:,} ({format_bytes(nbytes)})" if count else ""


def _format_value(x: Any) -> str:
    """``float32[2,3]`` for arrays, nested tuples/lists/dicts of those, ``repr`` otherwise."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{x.dtype}[{','.join(map(str, x.shape))}]"
    if isinstance(x, tuple | list):
        inner = ", ".join(_format_value(v) for v in x)
        return f"({inner})" if isinstance(x, tuple) else f"[{inner}]"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {_format_value(v)}" for k, v in x.items()) + "}"
    if isinstance(x, Variable):
        return _format_value(x.value)
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _abstract(tree: Any) -> Any:
    """Replace arrays and tracers by ShapeDtypeStructs so they outlive the trace."""

    def leaf(x: Any) -> Any:
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype)
        return x

    return jax.tree.map(leaf, tree, is_leaf=lambda x: isinstance(x, Variable))


def _variable_totals(node: Any) -> dict[str, tuple[int, int]]:
    """``{variable type name: (element count, bytes)}`` over the Variables of ``node``."""
    totals: dict[str, tuple[int, int]] = {}
    for _, var in graph_state(node).flat_state():
        if not isinstance(var, Variable):
            continue
        value = var.value
        shape, dtype = np.shape(value), getattr(value, "dtype", None)
        count = int(np.prod(shape))
        itemsize = dtype.itemsize if dtype is not None else np.asarray(value).itemsize
        if isinstance(var, Param):
            name = "Param"
        elif isinstance(var, RngState):
            name = "RngState"
        else:
            name = type(var).__name__
        c, b = totals.get(name, (0, 0))
        totals[name] = (c + count, b + count * itemsize)
    return totals


def _call_owner(cls: type) -> type | None:
    for klass in cls.__mro__:
        if "__call__" in vars(klass):
            return klass
    return None


class _CallRecorder:
    """Wraps ``__call__`` of the given classes while active; records one row per module call."""

    def __init__(self, module_types: set[type]):
        owners = {_call_owner(t) for t in module_types}
        self.owners = [o for o in owners if o is not None and o is not object]
        self.calls: list[dict[str, Any]] = []
        self._active: list[int] = []
        self._saved: dict[type, Any] = {}

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def recorded_call(module: Any, *args: Any, **kwargs: Any) -> Any:
            if id(module) in recorder._active:  # super().__call__ within the same module
                return original(module, *args, **kwargs)
            row = {"module": module, "inputs": _abstract((args, kwargs)), "outputs": None}
            recorder.calls.append(row)
            recorder._active.append(id(module))
            try:
                out = original(module, *args, **kwargs)
            finally:
                recorder._active.pop()
            row["outputs"] = _abstract(out)
            return out

        recorded_call.__wrapped__ = original  # type: ignore[attr-defined]
        return recorded_call

    def __enter__(self) -> _CallRecorder:
        try:
            for owner in self.owners:
                original = vars(owner)["__call__"]
                self._saved[owner] = original
                type.__setattr__(owner, "__call__", self._wrap(original))
        except BaseException:
            self._restore()
            raise
        return self

    def _restore(self) -> None:
        for owner, original in self._saved.items():
            type.__setattr__(owner, "__call__", original)
        self._saved.clear()

    def __exit__(self, *exc: Any) -> None:
        self._restore()


def _format_inputs(inputs: tuple[tuple, dict]) -> str:
    args, kwargs = inputs
    parts = [_format_value(a) for a in args]
    parts += [f"{k}={_format_value(v)}" for k, v in kwargs.items() if v is not None]
    return ", ".join(parts)


def _render(title: str, header: list[str], rows: list[list[str]], footer: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    body = [title, line(header), rule, *(line(r) for r in rows), rule, *footer]
    return "\n".join(body)


def tabulate(
    model: Module,
    *inputs: Any,
    depth: int | None = None,
    method: str = "__call__",
    **kwargs: Any,
) -> str:
    """A table of the modules of ``model``: calls, shapes, parameter counts and bytes.

    With ``inputs``, ``model.<method>(*inputs, **kwargs)`` is traced abstractly (no compute, the
    model is unchanged) and each submodule call becomes a row with its input and output shapes.
    Without inputs, each module becomes a row with its parameters only. Counts are those of a
    module's whole subtree; Variables other than ``Param`` (e.g. ``BatchStat``) get their own
    columns. The last lines give the totals of the model.

    Args:
      model: the module to describe.
      *inputs: example inputs (arrays or ``jax.ShapeDtypeStruct``) for ``method``.
      depth: show only modules at most this many attributes below the root (root is 0).
      method: the method of ``model`` to call.
      **kwargs: keyword arguments for ``method``.

    Example::

      >>> print(nnx.tabulate(model, jnp.ones((1, 3))))  # doctest: +SKIP
    """
    modules = list(model.iter_modules())
    by_path = dict(modules)

    if inputs or kwargs:
        calls = _trace_calls(model, method, inputs, kwargs)
        entries = [(path, by_path[path], call) for path, call in calls]
    else:
        entries = [(path, m, None) for path, m in sorted(modules, key=lambda pm: path_order(pm[0]))]

    totals = _variable_totals(model)
    kinds = ["Param"] + sorted(k for k in totals if k != "Param")
    with_calls = bool(inputs or kwargs)
    header = ["path", "module"] + (["inputs", "outputs"] if with_calls else []) + kinds
    rows = []
    for path, module, call in entries:
        if depth is not None and len(path) > depth:
            continue
        own = _variable_totals(module)
        row = ["/".join(map(str, path)) or "(root)", type(module).__name__]
        if with_calls:
            row += [_format_inputs(call["inputs"]), _format_value(call["outputs"])]
        row += [_format_count(*own.get(k, (0, 0))) for k in kinds]
        rows.append(row)

    grand_count = sum(c for c, _ in totals.values())
    grand_bytes = sum(b for _, b in totals.values())
    footer = [
        f"Total parameters: {_format_count(*totals.get('Param', (0, 0))) or '0'}",
        *(f"Total {k}: {_format_count(*totals[k])}" for k in kinds if k != "Param"),
        f"Total variables: {_format_count(grand_count, grand_bytes) or '0'}",
    ]
    return _render(f"{type(model).__name__} summary", header, rows, footer)


summary = tabulate  # ``from nnx.summary import summary`` (the module itself is callable too)


def _trace_calls(
    model: Module, method: str, inputs: tuple, kwargs: dict[str, Any]
) -> list[tuple[Path, dict[str, Any]]]:
    """Run ``model.<method>`` abstractly on a copy; return ``(module path, call row)`` pairs."""
    if not callable(getattr(model, method, None)):
        raise AttributeError(f"tabulate: {type(model).__name__} has no method {method!r}.")
    graphdef, state = split(model)
    module_types = {type(m) for _, m in model.iter_modules()}
    recorder = _CallRecorder(module_types)
    root_row: dict[str, Any] = {}
    paths: dict[int, Path] = {}

    leaves, treedef = jax.tree.flatten((inputs, kwargs))
    is_array = [hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves]
    arrays = [x for x, a in zip(leaves, is_array, strict=True) if a]

    def run(state: Any, arrays: list[Any]) -> Any:
        it = iter(arrays)
        args = [next(it) if a else x for x, a in zip(leaves, is_array, strict=True)]
        inputs, kwargs = jax.tree.unflatten(treedef, args)
        copy = merge(graphdef, state)
        paths.update({id(m): p for p, m in copy.iter_modules()})
        root_row["inputs"] = _abstract((inputs, kwargs))
        root_row["module"] = copy
        out = getattr(copy, method)(*inputs, **kwargs)
        root_row["outputs"] = _abstract(out)
        return out

    with recorder:
        jax.eval_shape(run, state, arrays)

    rows: list[tuple[Path, dict[str, Any]]] = []
    root_recorded = any(c["module"] is root_row["module"] for c in recorder.calls)
    if not root_recorded:
        rows.append(((), root_row))
    for call in recorder.calls:
        path = paths.get(id(call["module"]))
        if path is not None:  # modules created during the call have no path in the model
            rows.append((path, call))
    return rows


__all__ = ["summary", "tabulate"]


class _CallableModule(types.ModuleType):
    """Makes ``nnx.summary(model, x)`` work: the name is this module (as in Flax, so that
    ``nnx.summary.tabulate`` resolves) and calling it calls ``tabulate``."""

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        return tabulate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
