"""``nnx.jit``: ``jax.jit`` for functions of graph nodes, with a cached fast path.

On the first call (and whenever the global structure version has changed) the arguments are
flattened; the Variables found, the GraphDef-like static description, and the compiled pure
function are cached. A later call with the same argument objects and structure only reads each
cached Variable's value, calls the compiled function, and writes the new values back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from nnx import structure
from nnx.object import GraphNode
from nnx.transforms import shardings as shardlib
from nnx.transforms.lift import (
    Extraction,
    apply,
    collect,
    full_leaf_values,
    is_node,
    rebuild,
    write_back_fast,
)
from nnx.variables import Variable

_MAX_ENTRIES = 8


def _as_tuple(x: int | str | Sequence[Any] | None) -> tuple:
    if x is None:
        return ()
    if isinstance(x, int | str):
        return (x,)
    return tuple(x)


def _split_indices(donated: list[bool]) -> tuple[list[int], list[int]]:
    """Indices of the donated and of the kept entries."""
    return [i for i, d in enumerate(donated) if d], [i for i, d in enumerate(donated) if not d]


class _Entry:
    """One cached call signature: argument objects, their leaves and the compiled function."""

    __slots__ = (
        "treedef", "version", "nodes", "extraction", "variables", "all_variables", "jitted",
        "donated_idx", "kept_idx", "donated_ord", "kept_ord", "all_donated", "pattern",
        "ord_positions",
    )


class JitWrapped:
    """The callable returned by ``nnx.jit``; also a method decorator (binds ``self``)."""

    def __init__(
        self,
        fun: Callable[..., Any],
        *,
        in_shardings: Any = None,
        out_shardings: Any = None,
        static_argnums: int | Sequence[int] | None = None,
        static_argnames: str | Sequence[str] | None = None,
        donate_argnums: int | Sequence[int] | None = None,
        donate_argnames: str | Sequence[str] | None = None,
        **jit_kwargs: Any,
    ):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.in_shardings = in_shardings
        self.out_shardings = out_shardings
        self.static_argnums = _as_tuple(static_argnums)
        self.static_argnames = _as_tuple(static_argnames)
        self.donate_argnums = _as_tuple(donate_argnums)
        self.donate_argnames = _as_tuple(donate_argnames)
        self.jit_kwargs = jit_kwargs
        self._compiled: dict[Any, Any] = {}
        self._entries: list[_Entry] = []
        self._fast: _Entry | None = None

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return functools.partial(self, obj)

    # -- calling -------------------------------------------------------------------------
    def _split_static(self, args: tuple, kwargs: dict) -> tuple[tuple, dict, tuple]:
        if not self.static_argnums and not self.static_argnames:
            return args, kwargs, ()
        n = len(args)
        nums = {i % n if i < 0 else i for i in self.static_argnums if -n <= i < n}
        static = tuple((i, args[i]) for i in sorted(nums))
        static += tuple(sorted((k, kwargs[k]) for k in self.static_argnames if k in kwargs))
        dyn_args = tuple(a for i, a in enumerate(args) if i not in nums)
        dyn_kwargs = {k: v for k, v in kwargs.items() if k not in self.static_argnames}
        return dyn_args, dyn_kwargs, static

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fast = self._fast
        if fast is not None and not kwargs and fast.version == structure._version:
            # Steady state: the same objects (and arrays in the same places) as last time.
            pattern = fast.pattern
            if len(args) == len(pattern):
                for a, p in zip(args, pattern, strict=True):
                    if a is not p and (p is not None or not isinstance(a, _ARRAY_TYPES)):
                        break
                else:
                    variables = fast.variables
                    values = [v._raw_value for v in variables]
                    ordinary = [args[i] for i in fast.ord_positions]
                    if fast.all_donated:
                        out = fast.jitted(values, [], [], ordinary)
                    else:
                        out = self._call_jitted(fast, values, ordinary)
                    info = out[2].value
                    if info.changed or info.has_out_nodes:
                        return self._finish(fast, values, out)
                    for i, x in zip(info.updated, out[0], strict=True):
                        _SET_RAW(variables[i], x)
                    return info.out_treedef.unflatten(out[1])
        dyn_args, dyn_kwargs, static_args = self._split_static(args, kwargs)
        flat, treedef = jax.tree_util.tree_flatten((dyn_args, dyn_kwargs), is_leaf=is_node)
        version = structure.version()
        entry = self._lookup(flat, treedef, version, static_args)
        if entry is None:
            entry = self._new_entry(dyn_args, dyn_kwargs, static_args, flat, treedef, version)
        self._fast = entry if entry.pattern is not None else None
        return self._run(entry, flat)

    def _lookup(self, flat: list, treedef: Any, version: int, static_args: tuple) -> _Entry | None:
        for entry in self._entries:
            if entry.version != version or entry.treedef != (treedef, static_args):
                continue
            # The same graph nodes at the same leaf positions, other leaves not nodes.
            for x, node in zip(flat, entry.nodes, strict=True):
                if x is not node and (node is not None or isinstance(x, _NODE_TYPES)):
                    break
            else:
                return entry
        return None

    def _new_entry(
        self, args: tuple, kwargs: dict, static_args: tuple, flat: list, treedef: Any, version: int
    ) -> _Entry:
        extraction = Extraction([*args, kwargs])
        n_args = len(args)
        donated_args = self._donated_positions(args, static_args)
        if "kwargs" in donated_args:
            donated_args = donated_args - {"kwargs"} | {n_args}
        leaf_donated = [a in donated_args for a in extraction.leaf_args]
        ord_donated = [a in donated_args for a in extraction.ordinary_args]
        key = (extraction.static, static_args, tuple(leaf_donated), tuple(ord_donated))
        jitted = self._compiled.get(key)
        if jitted is None:
            jitted = self._compile(extraction, [*args, kwargs], static_args, leaf_donated, ord_donated)
            self._compiled[key] = jitted
        entry = _Entry()
        entry.treedef = (treedef, static_args)
        entry.version = structure.version()  # flattening may mark nodes seen, never bumps
        entry.nodes = [x if is_node(x) else None for x in flat]  # per leaf of the arguments
        entry.extraction = extraction
        entry.variables = extraction.leaves
        entry.all_variables = all(isinstance(o, Variable) for o in extraction.flattener.owners)
        entry.jitted = jitted
        entry.donated_idx, entry.kept_idx = _split_indices(leaf_donated)
        entry.donated_ord, entry.kept_ord = _split_indices(ord_donated)
        entry.all_donated = bool(leaf_donated) and all(leaf_donated) and not any(ord_donated)
        # The fast path's key: per positional argument, the node itself or None for an array.
        simple = (
            not kwargs and not static_args and entry.all_variables
            and all(is_node(a) or isinstance(a, _ARRAY_TYPES) for a in args)
        )
        entry.pattern = tuple(a if is_node(a) else None for a in args) if simple else None
        entry.ord_positions = [i for i, a in enumerate(args) if not is_node(a)]
        self._entries.insert(0, entry)
        del self._entries[_MAX_ENTRIES:]
        return entry

    def _donated_positions(self, args: tuple, static_args: tuple) -> set[Any]:
        if not self.donate_argnums and not self.donate_argnames:
            return set()
        # donate_argnums index the original positional arguments; map them past static ones.
        static_pos = sorted(i for i, _ in static_args if isinstance(i, int))
        n_total = len(args) + len(static_pos)
        original = [i for i in range(n_total) if i not in static_pos]
        donated = set()
        for d in self.donate_argnums:
            d = d % n_total if d < 0 else d
            if d in original:
                donated.add(original.index(d))
        if self.donate_argnames:
            donated.add("kwargs")  # kwargs form one group; any donated name donates it
        return donated

    def _compile(
        self, extraction: Extraction, call_args: Sequence[Any], static_args: tuple,
        leaf_donated: list, ord_donated: list,
    ) -> Any:
        fun = self.fun
        static = extraction.static
        n_leaves = len(leaf_donated)
        n_ord = len(ord_donated)
        donated_idx, kept_idx = _split_indices(leaf_donated)
        donated_ord, kept_ord = _split_indices(ord_donated)
        positional_static = [(i, v) for i, v in static_args if isinstance(i, int)]
        keyword_static = {k: v for k, v in static_args if isinstance(k, str)}

        def make_pure(record: list | None) -> Callable[..., tuple]:
            def pure(donated: list, kept: list, donated_o: list, kept_o: list) -> tuple:
                values: list[Any] = [None] * n_leaves
                for i, v in zip(donated_idx, donated, strict=True):
                    values[i] = v
                for i, v in zip(kept_idx, kept, strict=True):
                    values[i] = v
                ordinary: list[Any] = [None] * n_ord
                for i, v in zip(donated_ord, donated_o, strict=True):
                    ordinary[i] = v
                for i, v in zip(kept_ord, kept_o, strict=True):
                    ordinary[i] = v
                args, u, inner_nodes = rebuild(static, values, ordinary)
                *pos, kwargs = args
                for i, v in positional_static:
                    pos.insert(i, v)
                out = fun(*pos, **kwargs, **keyword_static)
                if record is not None:
                    record.append(shardlib.output_value_specs(out, self.out_shardings, "nnx.jit out_shardings"))
                result = collect(static, inner_nodes, u, out, values, leaf_donated)
                if record is not None:
                    record.append(result)
                return result

            return pure

        jit_kwargs = dict(self.jit_kwargs)
        donate = tuple(i for i, group in ((0, donated_idx), (2, donated_ord)) if group)
        leaf_s: list[Any] = [None] * n_leaves
        if self.in_shardings is not None:
            n_pos = len(call_args) - 1  # the last entry holds the keyword arguments
            specs = shardlib.per_argument(self.in_shardings, n_pos, "nnx.jit in_shardings")
            leaf_s, ord_s = shardlib.argument_leaf_specs(
                extraction, call_args, [*specs, None], "nnx.jit in_shardings"
            )
            jit_kwargs["in_shardings"] = (
                [leaf_s[i] for i in donated_idx], [leaf_s[i] for i in kept_idx],
                [ord_s[i] for i in donated_ord], [ord_s[i] for i in kept_ord],
            )
        if self.out_shardings is not None:
            # The outputs' structure is known only after tracing: trace once abstractly and
            # record which spec each returned array takes.
            record: list[Any] = []
            values = extraction.leaf_values()
            jax.eval_shape(
                make_pure(record),
                [values[i] for i in donated_idx], [values[i] for i in kept_idx],
                [extraction.ordinary[i] for i in donated_ord],
                [extraction.ordinary[i] for i in kept_ord],
            )
            by_id, (new_vals, out_ord, box) = record[0], record[1]
            updated = box.value.updated
            state_s = [
                leaf_s[updated[k]] if updated is not None and k < len(updated)
                else by_id.get(id(v))
                for k, v in enumerate(new_vals)
            ]
            jit_kwargs["out_shardings"] = (state_s, [by_id.get(id(v)) for v in out_ord], None)
        return jax.jit(make_pure(None), donate_argnums=donate, **jit_kwargs)

    def _run(self, entry: _Entry, flat: list) -> Any:
        if entry.all_variables:
            values = [v._raw_value for v in entry.variables]
        else:
            values = [
                o._raw_value if isinstance(o, Variable) else (
                    o[0]._graph_get(o[1]) if o is not None else leaf
                )
                for o, leaf in zip(entry.extraction.flattener.owners, entry.variables, strict=True)
            ]
        ordinary = [x for x in flat if not is_node(x)]
        return self._finish(entry, values, self._call_jitted(entry, values, ordinary))

    @staticmethod
    def _call_jitted(entry: _Entry, values: list, ordinary: list) -> Any:
        if entry.all_donated:
            return entry.jitted(values, [], [], ordinary)
        if entry.donated_idx or entry.donated_ord:
            return entry.jitted(
                [values[i] for i in entry.donated_idx], [values[i] for i in entry.kept_idx],
                [ordinary[i] for i in entry.donated_ord], [ordinary[i] for i in entry.kept_ord],
            )
        return entry.jitted([], values, [], ordinary)

    @staticmethod
    def _finish(entry: _Entry, values: list, out: Any) -> Any:
        """Write the call's results back into the arguments' objects; return the outputs."""
        new_values, out_ordinary, box = out
        info = box.value
        simple = not info.changed and not info.has_out_nodes
        if simple and entry.all_variables:
            variables = entry.variables
            for i, x in zip(info.updated, new_values, strict=True):
                _SET_RAW(variables[i], x)
            return info.out_treedef.unflatten(out_ordinary)
        full = full_leaf_values(box, new_values, values)
        if simple and write_back_fast(entry.extraction, full):
            return info.out_treedef.unflatten(out_ordinary)
        return apply(entry.extraction, box, full, out_ordinary)

    # -- introspection -------------------------------------------------------------------
    def lower(self, *args: Any, **kwargs: Any) -> Any:
        """Lower the pure function for these arguments (``jax.jit(...).lower``)."""
        dyn_args, dyn_kwargs, static_args = self._split_static(args, kwargs)
        flat, treedef = jax.tree_util.tree_flatten((dyn_args, dyn_kwargs), is_leaf=is_node)
        entry = self._new_entry(
            dyn_args, dyn_kwargs, static_args, flat, treedef, structure.version()
        )
        values = entry.extraction.leaf_values()
        ordinary = [x for x in flat if not is_node(x)]
        return entry.jitted.lower(
            [values[i] for i in entry.donated_idx], [values[i] for i in entry.kept_idx],
            [ordinary[i] for i in entry.donated_ord], [ordinary[i] for i in entry.kept_ord],
        )


_NODE_TYPES = (GraphNode, Variable)
_ARRAY_TYPES = (jax.Array, np.ndarray)
_SET_RAW = Variable._raw_value.__set__  # type: ignore[attr-defined]


def jit(
    fun: Callable[..., Any] | None = None,
    *,
    in_shardings: Any = None,
    out_shardings: Any = None,
    static_argnums: int | Sequence[int] | None = None,
    static_argnames: str | Sequence[str] | None = None,
    donate_argnums: int | Sequence[int] | None = None,
    donate_argnames: str | Sequence[str] | None = None,
    **jit_kwargs: Any,
) -> Any:
    """Compile ``fun`` with ``jax.jit``; graph nodes may appear anywhere in its arguments and
    outputs, and whatever it mutates on them is written back to the caller's objects.

    Use as ``nnx.jit(f)``, ``@nnx.jit`` or ``@nnx.jit(static_argnums=...)``, also on methods.

    Args:
      fun: the function to compile.
      in_shardings: one spec for every input, or a tuple with one per positional argument. A
        spec is a Sharding, PartitionSpec or None (for all arrays below it), a prefix pytree of
        them, or for a graph node a State of specs (``nnx.get_named_sharding``) or an
        ``nnx.StateSharding``. The node's updated state keeps its input sharding.
      out_shardings: specs for the output, in the same forms (Modules returned included).
      static_argnums / static_argnames: arguments treated as compile-time constants.
      donate_argnums / donate_argnames: arguments whose buffers (a Module's whole state
        included) may be reused for the outputs; arrays taken from them before the call become
        invalid.
      **jit_kwargs: passed to ``jax.jit`` (``keep_unused``, ``compiler_options``...).
    """
    kwargs = dict(
        in_shardings=in_shardings, out_shardings=out_shardings, static_argnums=static_argnums,
        static_argnames=static_argnames, donate_argnums=donate_argnums,
        donate_argnames=donate_argnames, **jit_kwargs,
    )
    if fun is None:
        return lambda f: jit(f, **kwargs)
    self_node = getattr(fun, "__self__", None)
    if self_node is not None and is_node(self_node):
        # A bound method of a Module: its object is carried as the first argument.
        wrapped = JitWrapped(fun.__func__, **kwargs)
        return functools.partial(wrapped, self_node)
    return JitWrapped(fun, **kwargs)
