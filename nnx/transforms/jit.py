"""``nnx.jit``: ``jax.jit`` for functions of graph nodes, with a cached fast path.

A call flattens its arguments (``Extraction``), finds the compiled program for their structure
(compiling it on first use) and binds the argument objects to their leaves. A later call with the
same objects, while no structural change happened anywhere (the global structure version), skips
the flatten: it reads each bound Variable's value, calls the program and writes the results back.

The fast path is sound only while every structural change bumps the version. Graph nodes (and the
``nnx.List`` / ``nnx.Dict`` that plain lists and dicts become) bump it; a mutable container that
is not a graph node (a dict in a tuple, an ``OrderedDict``, a dataclass, a user pytree) does not,
so arguments that hold one are flattened on every call (``Extraction.cacheable``). Results are
written only into objects of the current trace: an object captured from an outer trace raises
``TraceContextError`` instead of keeping a tracer.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from nnx import _structure as structure
from nnx._modes import DEFAULT as DEFAULT_MODE
from nnx._modes import Mode
from nnx._modes import resolve as resolve_mode
from nnx._tracing import current_trace
from nnx.object import GraphNode
from nnx.transforms import prefixes
from nnx.transforms.lift import (
    Extraction,
    apply,
    collect,
    creation_trace,
    foreign_write_error,
    full_leaf_values,
    is_node,
    rebuild,
    reject_bound_method,
    write_back_fast,
)
from nnx.transforms.programs import ProgramCache
from nnx.variablelib import Variable

_MAX_BINDINGS = 8  # argument-object signatures remembered per function
_NODE_TYPES = (GraphNode, Variable)
_ARRAY_TYPES = (jax.Array, np.ndarray)
_SET_RAW = Variable._raw_value.__set__  # type: ignore[attr-defined]


def _as_tuple(x: int | str | Sequence[Any] | None) -> tuple:
    if x is None:
        return ()
    if isinstance(x, int | str):
        return (x,)
    return tuple(x)


def _resolve_argnums(
    fun: Callable[..., Any], nums: tuple, names: tuple
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Both forms of an argument selection, as ``jax.jit`` has them: the positions of the
    named parameters that can be passed positionally, and the names of the numbered ones."""
    try:
        params = list(inspect.signature(fun).parameters.values())
    except (TypeError, ValueError):
        return nums, names
    positional = [
        p.name for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    nums = tuple(nums) + tuple(
        positional.index(n) for n in names if n in positional and positional.index(n) not in nums
    )
    names = tuple(names) + tuple(
        positional[i] for i in nums if 0 <= i < len(positional) and positional[i] not in names
        and params[i].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    )
    return nums, names


def _split_indices(donated: list[bool]) -> tuple[list[int], list[int]]:
    """Indices of the donated and of the kept entries."""
    return [i for i, d in enumerate(donated) if d], [i for i, d in enumerate(donated) if not d]


class _Program:
    """The compiled pure function of one static signature, and how its inputs split into the
    donated and the kept groups. Holds only structure: no user object, no array."""

    __slots__ = ("jitted", "donated_idx", "kept_idx", "donated_ord", "kept_ord", "all_donated")

    def __init__(self, jitted: Any, leaf_donated: list[bool], ord_donated: list[bool]):
        self.jitted = jitted
        self.donated_idx, self.kept_idx = _split_indices(leaf_donated)
        self.donated_ord, self.kept_ord = _split_indices(ord_donated)
        self.all_donated = bool(leaf_donated) and all(leaf_donated) and not any(ord_donated)

    def _groups(self, values: list, ordinary: list) -> tuple[list, list, list, list]:
        if self.all_donated:
            return values, [], [], ordinary
        if self.donated_idx or self.donated_ord:
            return (
                [values[i] for i in self.donated_idx], [values[i] for i in self.kept_idx],
                [ordinary[i] for i in self.donated_ord], [ordinary[i] for i in self.kept_ord],
            )
        return [], values, [], ordinary

    def __call__(self, values: list, ordinary: list) -> Any:
        return self.jitted(*self._groups(values, ordinary))

    def lower(self, values: list, ordinary: list) -> Any:
        return self.jitted.lower(*self._groups(values, ordinary))

    def with_jitted(self, jitted: Any) -> _Program:
        """The same program run by another callable (an ahead-of-time compiled executable)."""
        other = object.__new__(_Program)
        for name in _Program.__slots__:
            object.__setattr__(other, name, getattr(self, name))
        other.jitted = jitted
        return other


class Lowered:
    """``nnx.jit(f).lower(*args)``: jax's ``Lowered`` of the pure function (``as_text``,
    ``cost_analysis``... are jax's); ``compile()`` returns a ``Compiled``."""

    def __init__(self, wrapped: JitWrapped, program: _Program, lowered: Any):
        self._wrapped, self._program, self._lowered = wrapped, program, lowered

    def compile(self, *args: Any, **kwargs: Any) -> Compiled:
        return Compiled(self._wrapped, self._program, self._lowered.compile(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lowered, name)


class Compiled:
    """A compiled ``nnx.jit`` function: called with the arguments it was lowered for (same
    structure and shapes), it runs the executable and writes updates back into the arguments'
    objects. jax's ``Compiled`` methods (``as_text``, ``cost_analysis``...) are available."""

    def __init__(self, wrapped: JitWrapped, program: _Program, compiled: Any):
        self._wrapped, self._compiled = wrapped, compiled
        self._program = program.with_jitted(compiled)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        wrapped = self._wrapped
        dyn_args, dyn_kwargs, _ = wrapped._split_static(args, kwargs)
        return wrapped._run_unbound(Extraction([*dyn_args, dyn_kwargs], wrapped.mode), self._program)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._compiled, name)


class _Binding:
    """Where the leaves of one call signature live, all held by weak references: the argument
    nodes that recognise the next call, and per leaf its Variable (or, for a raw array, the
    graph node holding it and the key). Valid while the structure version is ``version``.

    Only arguments whose every structural change bumps the structure version are bound
    (``Extraction.cacheable``); others are flattened again on every call.
    """

    __slots__ = (
        "key", "version", "node_refs", "program", "refs", "keys", "all_variables", "paths",
        "pattern", "ord_positions", "home",
    )

    def read(self) -> tuple[list[Any], list[Any]]:
        """The leaves' owners and current values; AttributeError if an owner no longer exists
        (only a change the version did not see can cause that)."""
        objs = [r() for r in self.refs]
        if self.all_variables:
            return objs, [o._raw_value for o in objs]
        return objs, [
            o._raw_value if k is None else o._graph_get(k)
            for o, k in zip(objs, self.keys, strict=True)
        ]

    def write(
        self, objs: list[Any], updated: Sequence[int], new_values: Sequence[Any], trace: Any
    ) -> None:
        """Write returned values into their owners (``updated`` indexes the leaves). If the
        call runs in another trace than the objects' own, an owner of another trace than
        ``trace`` raises before anything is written."""
        keys = self.keys
        if trace is not self.home:
            for i in updated:
                if creation_trace(objs[i]) != trace:
                    raise foreign_write_error(objs[i], self.paths[i])
        if self.all_variables:
            for i, x in zip(updated, new_values, strict=True):
                _SET_RAW(objs[i], x)
            return
        for i, x in zip(updated, new_values, strict=True):
            if keys[i] is None:
                _SET_RAW(objs[i], x)
            else:
                objs[i]._graph_set(keys[i], x)


def _weak(x: Any) -> Any:
    return weakref.ref(x) if is_node(x) else None


class JitWrapped:
    """The callable returned by ``nnx.jit``; also a method decorator (binds ``self``).

    Its caches hold no strong reference to user objects or arrays: compiled programs are keyed
    by structure only (a bounded ``ProgramCache``), and bindings of argument objects to leaves
    use weak references.
    """

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
        mode: Mode = DEFAULT_MODE,
        **jit_kwargs: Any,
    ):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.mode = mode
        self.in_shardings = in_shardings
        self.out_shardings = out_shardings
        self.static_argnums, self.static_argnames = _resolve_argnums(
            fun, _as_tuple(static_argnums), _as_tuple(static_argnames)
        )
        self.donate_argnums, self.donate_argnames = _resolve_argnums(
            fun, _as_tuple(donate_argnums), _as_tuple(donate_argnames)
        )
        self.jit_kwargs = jit_kwargs
        self._programs = ProgramCache()
        self._bindings: list[_Binding] = []
        self._fast: _Binding | None = None

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
        if not self.mode.full:
            return self._call_functional(args, kwargs)
        fast = self._fast
        if fast is not None and not kwargs and fast.version == structure._version:
            # Steady state: the same objects (and arrays in the same places) as last time, in
            # the trace those objects belong to.
            trace = current_trace()
            pattern = fast.pattern
            if trace is fast.home and len(args) == len(pattern):
                for a, p in zip(args, pattern, strict=True):
                    if (a is not p()) if p is not None else not isinstance(a, _ARRAY_TYPES):
                        break
                else:
                    try:
                        objs, values = fast.read()
                    except AttributeError:
                        self._forget(fast)
                    else:
                        out = fast.program(values, [args[i] for i in fast.ord_positions])
                        info = out[2].value
                        if info.changed or info.has_out_nodes:
                            return self._finish(fast, objs, values, out, args, {}, trace)
                        for i, x in zip(info.updated, out[0], strict=True):
                            _SET_RAW(objs[i], x)
                        return info.out_treedef.unflatten(out[1])
        return self._call(args, kwargs)

    def _call(self, args: tuple, kwargs: dict) -> Any:
        dyn_args, dyn_kwargs, static_args = self._split_static(args, kwargs)
        flat, treedef = jax.tree_util.tree_flatten((dyn_args, dyn_kwargs), is_leaf=is_node)
        version = structure.version()
        trace = current_trace()
        binding = self._lookup(flat, treedef, version, static_args)
        if binding is not None:
            try:
                objs, values = binding.read()
            except AttributeError:
                self._forget(binding)
                binding = None
        if binding is None:
            extraction = Extraction([*dyn_args, dyn_kwargs])
            program = self._program(extraction, dyn_args, dyn_kwargs, static_args)
            if not extraction.cacheable:
                self._fast = None
                return self._run_unbound(extraction, program)
            binding = self._bind(
                extraction, program, dyn_args, dyn_kwargs, static_args, flat, treedef, trace
            )
            objs, values = binding.read()
        self._fast = binding if binding.pattern is not None and binding.home is trace else None
        out = binding.program(values, [x for x in flat if not is_node(x)])
        return self._finish(binding, objs, values, out, dyn_args, dyn_kwargs, trace)

    def _call_functional(self, args: tuple, kwargs: dict) -> Any:
        """``graph_updates=False`` or tree mode: flatten each call (nothing to bind), write back
        new Variable values only."""
        dyn_args, dyn_kwargs, static_args = self._split_static(args, kwargs)
        extraction = Extraction([*dyn_args, dyn_kwargs], self.mode)
        return self._run_unbound(extraction, self._program(extraction, dyn_args, dyn_kwargs, static_args))

    def _lookup(
        self, flat: list, treedef: Any, version: int, static_args: tuple
    ) -> _Binding | None:
        for binding in self._bindings:
            if binding.version != version or binding.key != (treedef, static_args):
                continue
            # The same graph nodes at the same leaf positions, other leaves not nodes.
            for x, ref in zip(flat, binding.node_refs, strict=True):
                if (x is not ref()) if ref is not None else isinstance(x, _NODE_TYPES):
                    break
            else:
                return binding
        return None

    def _forget(self, binding: _Binding) -> None:
        if self._fast is binding:
            self._fast = None
        if binding in self._bindings:
            self._bindings.remove(binding)

    def _program(
        self, extraction: Extraction, args: tuple, kwargs: dict, static_args: tuple
    ) -> _Program:
        """The compiled program for these arguments' structure (compiled on first use)."""
        donated_args = self._donated_positions(args, static_args, set(kwargs))
        if "kwargs" in donated_args:
            donated_args = donated_args - {"kwargs"} | {len(args)}
        leaf_donated = [a in donated_args for a in extraction.leaf_args]
        ord_donated = [a in donated_args for a in extraction.ordinary_args]
        key = (extraction.static, static_args, tuple(leaf_donated), tuple(ord_donated))
        return self._programs.get(key, lambda: _Program(
            self._compile(extraction, [*args, kwargs], static_args, leaf_donated, ord_donated),
            leaf_donated, ord_donated,
        ))

    def _bind(
        self, extraction: Extraction, program: _Program, args: tuple, kwargs: dict,
        static_args: tuple, flat: list, treedef: Any, trace: Any,
    ) -> _Binding:
        f = extraction.flattener
        b = _Binding()
        b.key = (treedef, static_args)
        b.version = structure.version()  # flattening may mark nodes seen, never bumps
        b.node_refs = [_weak(x) for x in flat]
        b.program = program
        b.all_variables = all(isinstance(o, Variable) for o in f.owners)
        b.refs = [weakref.ref(o if isinstance(o, Variable) else o[0]) for o in f.owners]
        b.keys = [None if isinstance(o, Variable) else o[1] for o in f.owners]
        b.paths = tuple(f.paths)
        # The trace every object was created under, if they all share the current one: writes
        # into them then need no per-object check.
        b.home = trace if all(creation_trace(o) == trace for o in f.objects) else None
        simple = (
            not kwargs and not static_args and b.all_variables
            and all(is_node(a) or isinstance(a, _ARRAY_TYPES) for a in args)
        )
        b.pattern = tuple(_weak(a) for a in args) if simple else None
        b.ord_positions = [i for i, a in enumerate(args) if not is_node(a)]
        self._bindings = [x for x in self._bindings if x.version == b.version]
        self._bindings.insert(0, b)
        del self._bindings[_MAX_BINDINGS:]
        return b

    def _finish(
        self, binding: _Binding, objs: list, values: list, out: Any, args: tuple, kwargs: dict,
        trace: Any,
    ) -> Any:
        """Write a bound call's results back into the arguments' objects; return the outputs."""
        new_values, out_ordinary, box = out
        info = box.value
        if info.changed or info.has_out_nodes:
            # Rebuilding structure needs the objects in walk order: flatten again (the call
            # changed nothing outside, so the walk finds the bound objects in the same order).
            extraction = Extraction([*args, kwargs])
            return apply(extraction, box, full_leaf_values(box, new_values, values), out_ordinary)
        binding.write(objs, info.updated, new_values, trace)
        return info.out_treedef.unflatten(out_ordinary)

    @staticmethod
    def _run_unbound(extraction: Extraction, program: _Program) -> Any:
        values = extraction.leaf_values()
        new_values, out_ordinary, box = program(values, extraction.ordinary)
        info = box.value
        full = full_leaf_values(box, new_values, values)
        if not info.changed and not info.has_out_nodes and write_back_fast(extraction, full):
            return info.out_treedef.unflatten(out_ordinary)
        return apply(extraction, box, full, out_ordinary)

    # -- ahead of time ---------------------------------------------------------------------
    def lower(self, *args: Any, **kwargs: Any) -> Lowered:
        """Lower for these arguments (as ``jax.jit(...).lower``); ``.compile()`` gives a function
        that takes the same arguments (Modules included) and writes their updates back."""
        dyn_args, dyn_kwargs, static_args = self._split_static(args, kwargs)
        extraction = Extraction([*dyn_args, dyn_kwargs], self.mode)
        program = self._program(extraction, dyn_args, dyn_kwargs, static_args)
        return Lowered(self, program, program.lower(extraction.leaf_values(), extraction.ordinary))

    def _donated_positions(
        self, args: tuple, static_args: tuple, kwargs_names: set[str] = frozenset()
    ) -> set[Any]:
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
        if self.donate_argnames and kwargs_names & set(self.donate_argnames):
            donated.add("kwargs")  # kwargs form one group; a donated name among them donates it
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
                    record.append(prefixes.output_value_specs(out, self.out_shardings, "nnx.jit out_shardings"))
                result = collect(
                    static, inner_nodes, u, out, values, always_return, constrain=state_specs
                )
                if record is not None:
                    record.append(result)
                return result

            return pure

        jit_kwargs = dict(self.jit_kwargs)
        donate = tuple(i for i, group in ((0, donated_idx), (2, donated_ord)) if group)
        leaf_s: list[Any] = [None] * n_leaves
        state_specs = None
        always_return = leaf_donated
        if self.in_shardings is not None:
            n_pos = len(call_args) - 1  # the last entry holds the keyword arguments
            specs = prefixes.per_argument(self.in_shardings, n_pos, "nnx.jit in_shardings")
            leaf_s, ord_s = prefixes.argument_leaf_specs(
                extraction, call_args, [*specs, None], "nnx.jit in_shardings"
            )
            # A sharded argument's state comes back placed as its spec says, changed or not.
            state_specs = prefixes.StateSpecs(leaf_s, extraction.leaf_args, extraction.paths)
            always_return = [d or sp is not None for d, sp in zip(leaf_donated, leaf_s, strict=True)]
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


def jit(
    fun: Callable[..., Any] | None = None,
    *,
    in_shardings: Any = None,
    out_shardings: Any = None,
    static_argnums: int | Sequence[int] | None = None,
    static_argnames: str | Sequence[str] | None = None,
    donate_argnums: int | Sequence[int] | None = None,
    donate_argnames: str | Sequence[str] | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
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
      graph / graph_updates: graph or tree mode, and whether structure changes are carried
        out (see ``nnx.set_graph_mode``); None: the current setting.
      **jit_kwargs: passed to ``jax.jit`` (``keep_unused``, ``compiler_options``...).
    """
    mode = resolve_mode(graph, graph_updates)
    kwargs = dict(
        in_shardings=in_shardings, out_shardings=out_shardings, static_argnums=static_argnums,
        static_argnames=static_argnames, donate_argnums=donate_argnums,
        donate_argnames=donate_argnames, **jit_kwargs,
    )
    for name in ("in_shardings", "out_shardings"):
        prefixes.check_prefix(kwargs[name], name, "jit", mode)
    if fun is None:
        return lambda f: JitWrapped(reject_bound_method(f, "jit"), mode=mode, **kwargs)
    return JitWrapped(reject_bound_method(fun, "jit"), mode=mode, **kwargs)
