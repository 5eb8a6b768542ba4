"""``tabulate`` / ``summary``: a per-module table of calls, shapes, Variables, counts and bytes.

With inputs, the model is run under ``jax.eval_shape`` on a copy rebuilt from its State (so the
model itself is never changed and nothing is computed); every call of a module method (its
``__call__`` and its public methods) is recorded by temporarily wrapping those methods on the
module classes involved. With ``compute_flops`` each recorded call is also lowered with
``jax.jit`` to read XLA's cost estimate; the method body still runs once.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnx._display import format_bytes
from nnx._typing import Path, path_order
from nnx.graph import is_graph_node, merge, split
from nnx.graph import state as graph_state
from nnx.graph import update as graph_update
from nnx.module import Module
from nnx.object import GraphNode, Object
from nnx.variablelib import RngState, Variable

# Methods of these classes are framework plumbing (train, sow, iter_modules...), never rows.
_FRAMEWORK_CLASSES = (Module, Object, GraphNode, object)


# -- describing values ---------------------------------------------------------------------


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _describe(x: Any) -> str:
    """``float32[2,3]`` for arrays, ``Linear(...)`` for graph nodes, ``repr`` otherwise."""
    if isinstance(x, Variable):
        x = x.get_raw_value()
    if _is_array(x):
        return f"{x.dtype}[{','.join(map(str, x.shape))}]"
    if is_graph_node(x):
        return f"{type(x).__name__}(...)"
    if isinstance(x, type):
        return f"type[{x.__name__}]"
    if isinstance(x, str):
        return x
    return repr(x)


def _yaml_lines(x: Any) -> list[str]:
    """``x`` as YAML-like lines: ``key: value`` for mappings, ``- item`` for sequences."""
    if isinstance(x, Mapping) and not isinstance(x, Variable):
        if not x:
            return ["{}"]
        lines = []
        for key, value in x.items():
            inner = _yaml_lines(value)
            if _is_block(value):
                lines += [f"{key}:", *("  " + line for line in inner)]
            else:
                lines.append(f"{key}: {inner[0]}")
        return lines
    if isinstance(x, list | tuple) and not hasattr(type(x), "_fields"):
        if not x:
            return ["[]"]
        lines = []
        for item in x:
            inner = _yaml_lines(item)
            lines += [f"- {inner[0]}", *("  " + line for line in inner[1:])]
        return lines
    if isinstance(x, tuple):  # a namedtuple: by field name
        return _yaml_lines(dict(zip(type(x)._fields, x, strict=True)))
    return [_describe(x)]


def _is_block(x: Any) -> bool:
    return (isinstance(x, Mapping) and not isinstance(x, Variable) and bool(x)) or (
        isinstance(x, list | tuple) and bool(x)
    )


def _inputs_text(args: tuple, kwargs: dict[str, Any]) -> str:
    lines: list[str] = []
    if args:
        lines += _yaml_lines(args[0] if len(args) == 1 and not kwargs else list(args))
    if kwargs:
        lines += _yaml_lines(kwargs)
    return "\n".join(lines)


def _outputs_text(out: Any) -> str:
    return "" if out is None else "\n".join(_yaml_lines(out))


def _abstract(tree: Any) -> Any:
    """Arrays and tracers replaced by ShapeDtypeStructs so they outlive the trace."""

    def leaf(x: Any) -> Any:
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype) if _is_array(x) else x

    return jax.tree.map(leaf, tree, is_leaf=lambda x: isinstance(x, Variable) or is_graph_node(x))


# -- Variables per module ------------------------------------------------------------------


def _kind(var: Variable) -> str:
    """The column a Variable is counted in: its type's name, ``RngState`` for RNG state."""
    return "RngState" if isinstance(var, RngState) else type(var).__name__


def _size_bytes(value: Any) -> tuple[int, int]:
    count = int(np.prod(np.shape(value)))
    dtype = getattr(value, "dtype", None)
    itemsize = dtype.itemsize if dtype is not None else np.asarray(value).itemsize
    return count, count * itemsize


def _totals(node: Any) -> dict[str, tuple[int, int]]:
    """``{kind: (element count, bytes)}`` over the Variables of ``node``'s subtree."""
    totals: dict[str, tuple[int, int]] = {}
    for _, var in graph_state(node).flat_state():
        if isinstance(var, Variable):
            c, b = totals.get(_kind(var), (0, 0))
            dc, db = _size_bytes(var.get_raw_value())
            totals[_kind(var)] = (c + dc, b + db)
    return totals


def _count_text(count: int, nbytes: int) -> str:
    return f"{count:,} ({format_bytes(nbytes)})" if count else ""


def _variables_text(module: Any, kind: str, total: tuple[int, int]) -> str:
    """A cell: the module's own Variables of ``kind`` (shape, metadata), then its subtree total."""
    own: dict[Any, Any] = {}
    for key, value in module._graph_items():
        if isinstance(value, Variable) and _kind(value) == kind:
            shown = {
                k: v for k, v in value.get_metadata().items() if k not in value.required_metadata
            }
            own[key] = {"value": value.get_raw_value(), **shown} if shown else value.get_raw_value()
    lines = [*_yaml_lines(own), ""] if own else []
    count = _count_text(*total)
    return "\n".join([*lines, count] if count else lines).rstrip("\n")


# -- recording calls -----------------------------------------------------------------------


def _recorded_methods(module_types: set[type]) -> list[tuple[type, str]]:
    """``(defining class, name)`` of ``__call__`` and the public methods of the module types."""
    found = set()
    for t in module_types:
        for klass in t.__mro__:
            if klass in _FRAMEWORK_CLASSES:
                continue
            for name, attr in vars(klass).items():
                if inspect.isfunction(attr) and (name == "__call__" or not name.startswith("_")):
                    found.add((klass, name))
    return sorted(found, key=lambda kn: (kn[0].__qualname__, kn[1]))


def _flops(lowered: Any) -> int:
    cost = lowered.cost_analysis() or lowered.compile().cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return int(cost.get("flops", 0)) if cost else 0


def _cotangent(x: Any) -> Any:
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.ones_like(x)
    return np.zeros(np.shape(x), jax.dtypes.float0)


class _CallRecorder:
    """Wraps module methods while active; records one row per distinct module call.

    A call of the same module and method with inputs of the same shapes as an earlier one is
    shown once. ``super()`` chains of one method give one row.
    """

    def __init__(self, module_types: set[type], compute_flops: bool, compute_vjp_flops: bool):
        self.methods = _recorded_methods(module_types)
        self.compute_flops = compute_flops
        self.compute_vjp_flops = compute_vjp_flops
        self.rows: list[dict[str, Any]] = []
        self._seen: set[tuple] = set()
        self._active: list[tuple[int, str]] = []
        self._suspended = 0
        self._saved: list[tuple[type, str, Any]] = []
        # modules rebuilt inside a jitted call -> the module of the traced copy they stand for
        self._aliases: dict[int, tuple[Any, Any]] = {}

    def canonical(self, module: Any) -> Any:
        alias = self._aliases.get(id(module))
        return alias[1] if alias is not None else module

    def _alias(self, rebuilt: Any, module: Any) -> None:
        pairs = zip(rebuilt.iter_modules(), module.iter_modules(), strict=True)
        for (_, new), (_, old) in pairs:
            self._aliases[id(new)] = (new, self.canonical(old))  # keeps ``new`` alive: ids stay unique

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def recorded(module: Any, *args: Any, **kwargs: Any) -> Any:
            if recorder._suspended or not isinstance(module, Module):
                return original(module, *args, **kwargs)
            canonical = recorder.canonical(module)
            active = (id(canonical), name)
            if active in recorder._active:
                return original(module, *args, **kwargs)
            inputs = _inputs_text(args, kwargs)
            identity = (*active, inputs)
            row = None
            if identity not in recorder._seen:
                recorder._seen.add(identity)
                row = {"module": canonical, "method": name, "inputs": inputs, "outputs": ""}
                recorder.rows.append(row)
            recorder._active.append(active)
            try:
                out = recorder._run(original, module, args, kwargs, row)
            finally:
                recorder._active.pop()
            if row is not None:
                row["outputs"] = _outputs_text(_abstract(out))
            return out

        recorded.__wrapped__ = original  # type: ignore[attr-defined]
        return recorded

    def _run(self, original: Callable, module: Any, args: tuple, kwargs: dict, row: Any) -> Any:
        if row is None or not (self.compute_flops or self.compute_vjp_flops):
            return original(module, *args, **kwargs)
        # A pure function of the module's and arguments' state, jitted: lowering it gives the
        # cost; calling it then hits jit's cache, so the method body runs once.
        graphdef, state = split((module, args, kwargs))
        static: dict[str, Any] = {}

        def pure(state: Any) -> tuple[list[Any], Any]:
            m, a, k = merge(graphdef, state)
            self._alias(m, module)
            out = original(m, *a, **k)
            leaves, static["treedef"] = jax.tree.flatten(out)
            static["leaves"] = leaves
            arrays = [x for x in leaves if _is_array(x)]
            return arrays, split(m)[1]

        jitted = jax.jit(pure)
        row["flops"] = _flops(jitted.lower(state)) if self.compute_flops else None
        if self.compute_vjp_flops:
            self._suspended += 1
            try:
                row["vjp_flops"] = _flops(jax.jit(self._vjp(pure)).lower(state))
            finally:
                self._suspended -= 1
        arrays, new_state = jitted(state)
        graph_update(module, new_state)
        it = iter(arrays)
        leaves = [next(it) if _is_array(x) else x for x in static["leaves"]]
        return jax.tree.unflatten(static["treedef"], leaves)

    @staticmethod
    def _vjp(pure: Callable[[Any], tuple[list[Any], Any]]) -> Callable[[Any], Any]:
        def forward_backward(state: Any) -> Any:
            primals, backward = jax.vjp(lambda s: pure(s)[0], state)
            return backward(jax.tree.map(_cotangent, primals))

        return forward_backward

    def __enter__(self) -> _CallRecorder:
        try:
            for klass, name in self.methods:
                original = vars(klass)[name]
                self._saved.append((klass, name, original))
                type.__setattr__(klass, name, self._wrap(name, original))
        except BaseException:
            self._restore()
            raise
        return self

    def _restore(self) -> None:
        for klass, name, original in reversed(self._saved):
            type.__setattr__(klass, name, original)
        self._saved.clear()

    def __exit__(self, *exc: Any) -> None:
        self._restore()


def _trace_calls(
    model: Module, method: str, inputs: tuple, kwargs: dict[str, Any], compute_flops: bool,
    compute_vjp_flops: bool,
) -> list[tuple[Path, dict[str, Any]]]:
    """Run ``model.<method>`` abstractly on a copy; return ``(row path, call row)`` pairs."""
    if not callable(getattr(model, method, None)):
        raise AttributeError(f"tabulate: {type(model).__name__} has no method {method!r}.")
    graphdef, state = split(model)
    module_types = {type(m) for _, m in model.iter_modules()}
    recorder = _CallRecorder(module_types, compute_flops, compute_vjp_flops)
    root: dict[str, Any] = {"method": method}
    paths: dict[int, Path] = {}

    leaves, treedef = jax.tree.flatten((inputs, kwargs))
    is_array = [_is_array(x) for x in leaves]
    arrays = [x for x, a in zip(leaves, is_array, strict=True) if a]

    def run(state: Any, arrays: list[Any]) -> None:
        it = iter(arrays)
        args, kw = jax.tree.unflatten(treedef, [next(it) if a else x for x, a in zip(leaves, is_array, strict=True)])
        copy = merge(graphdef, state)
        paths.update({id(m): p for p, m in copy.iter_modules()})
        root.update(module=copy, inputs=_inputs_text(args, kw))
        out = getattr(copy, method)(*args, **kw)
        root["outputs"] = _outputs_text(_abstract(out))

    with recorder:
        jax.eval_shape(run, state, arrays)

    rows: list[tuple[Path, dict[str, Any]]] = []
    if not any(r["module"] is root["module"] and r["method"] == method for r in recorder.rows):
        rows.append(((method,) if method != "__call__" else (), root))
    for row in recorder.rows:
        path = paths.get(id(row["module"]))
        if path is not None:  # modules created during the call have no path in the model
            rows.append(((*path, row["method"]) if row["method"] != "__call__" else path, row))
    return rows


# -- the table -------------------------------------------------------------------------------


def _box(title: str, header: list[str], rows: list[list[str]], footer: list[str], caption: str) -> str:
    """A text table drawn with box characters: title, header, one block per row, footer."""
    cells = [[c.split("\n") for c in r] for r in [header, *rows, footer]]
    widths = [max(len(line) for r in cells for line in r[i]) for i in range(len(header))]

    def rule(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def block(row: list[list[str]], edge: str, align_right: set[int] = frozenset()) -> list[str]:
        height = max(len(c) for c in row)
        lines = []
        for i in range(height):
            parts = []
            for j, (c, w) in enumerate(zip(row, widths, strict=True)):
                text = c[i] if i < len(c) else ""
                parts.append(f" {text.rjust(w) if j in align_right else text.ljust(w)} ")
            lines.append(edge + edge.join(parts) + edge)
        return lines

    head, *body, foot = cells
    lines = [rule("┏", "━", "┳", "┓"), *block(head, "┃"), rule("┡", "━", "╇", "┩")]
    for r in body:
        lines += [*block(r, "│"), rule("├", "─", "┼", "┤")]
    total_column = {footer.index("Total")} if "Total" in footer else set()
    lines += [*block(foot, "│", total_column), rule("└", "─", "┴", "┘")]
    width = len(lines[0])
    return "\n".join([title.center(width).rstrip(), *lines, "", caption.center(width).rstrip()])


def tabulate(
    model: Module,
    *inputs: Any,
    depth: int | None = None,
    method: str = "__call__",
    compute_flops: bool = False,
    compute_vjp_flops: bool = False,
    console_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> str:
    """A table of ``model``'s module calls: inputs, outputs, Variables, counts and bytes.

    With ``inputs`` (or ``kwargs``), ``model.<method>(*inputs, **kwargs)`` is traced abstractly
    (no compute, the model is unchanged) and each call of a module's ``__call__`` or public
    method becomes a row (``block/forward`` for a method other than ``__call__``; a repeated
    call with inputs of the same shapes is shown once). Without inputs each module is a row.
    There is one column per Variable type (RNG state together as ``RngState``): a module's own
    Variables with shape and metadata, then the total of its subtree. The footer gives the
    model's totals and ``Total Parameters`` (all Variables).

    Args:
      model: the module to describe.
      *inputs: example inputs (arrays or ``jax.ShapeDtypeStruct``) for ``method``.
      depth: show only rows whose path has at most this many parts (the root's is empty).
      method: the method of ``model`` to call.
      compute_flops: add a ``flops`` column: XLA's estimate for each call.
      compute_vjp_flops: add a ``vjp_flops`` column: the estimate for forward plus backward
        pass (runs each method body again).
      console_kwargs: accepted for Flax compatibility (Flax renders with rich); the table here
        is plain text and never wraps.
      **kwargs: keyword arguments for ``method``.

    Example::

      >>> print(nnx.tabulate(model, jnp.ones((1, 3))))  # doctest: +SKIP
    """
    del console_kwargs
    modules = list(model.iter_modules())
    by_path = dict(modules)
    with_calls = bool(inputs or kwargs)
    if with_calls:
        calls = _trace_calls(model, method, inputs, kwargs, compute_flops, compute_vjp_flops)
    else:
        calls = [(p, {"module": m}) for p, m in sorted(modules, key=lambda pm: path_order(pm[0]))]

    totals = _totals(model)
    kinds = sorted(totals)
    header = ["path", "type"]
    if with_calls:
        header += ["inputs", "outputs"]
        header += ["flops"] * compute_flops + ["vjp_flops"] * compute_vjp_flops
    header += kinds
    rows = []
    for path, call in calls:
        if depth is not None and len(path) > depth:
            continue
        module_path = path if call.get("method", "__call__") == "__call__" else path[:-1]
        module = by_path[module_path]
        row = ["/".join(map(str, path)), type(module).__name__]
        if with_calls:
            row += [call["inputs"], call["outputs"]]
            row += [str(call.get("flops"))] * compute_flops
            row += [str(call.get("vjp_flops"))] * compute_vjp_flops
        own = _totals(module)
        row += [_variables_text(module, k, own.get(k, (0, 0))) for k in kinds]
        rows.append(row)

    footer = [""] * (len(header) - len(kinds) - 1) + ["Total"]
    footer += [_count_text(*totals[k]) for k in kinds]
    count = sum(c for c, _ in totals.values())
    nbytes = sum(b for _, b in totals.values())
    caption = f"Total Parameters: {_count_text(count, nbytes) or '0'}"
    return _box(f"{type(model).__name__} Summary", header, rows, footer, caption)


summary = tabulate  # ``from nnx.summary import summary`` (the module itself is callable too)


__all__ = ["summary", "tabulate"]


class _CallableModule(types.ModuleType):
    """Makes ``nnx.summary(model, x)`` work: the name is this module (as in Flax, so that
    ``nnx.summary.tabulate`` resolves) and calling it calls ``tabulate``."""

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        return tabulate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
