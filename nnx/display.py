"""Text and treescope renderings of graph nodes, Variables, States and GraphDefs."""

from __future__ import annotations

from typing import Any

import numpy as np

_INDENT = "  "


def _array_repr(x: Any) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    kind = "ShapeDtypeStruct" if type(x).__name__ == "ShapeDtypeStruct" else "Array"
    if kind == "Array" and shape == () and dtype is not None:
        try:
            return f"Array({np.asarray(x).item()!r}, dtype={dtype})"
        except Exception:
            pass
    return f"{kind}(shape={tuple(shape)}, dtype={dtype})"


def _dtype_name(value: Any) -> str | None:
    """The name of ``value`` when it denotes a dtype (``np.dtype``, a numpy scalar type such as
    ``np.float32``, or a ``jnp`` scalar type such as ``jnp.bfloat16``), else None."""
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, type):
        if issubclass(value, np.generic):
            return np.dtype(value).name
        dtype = getattr(value, "dtype", None)  # jnp.float32 and friends carry their np.dtype
        if isinstance(dtype, np.dtype):
            return dtype.name
    return None


def _leaf_repr(value: Any) -> str:
    """``repr(value)``, except that dtypes, alone or in a list, tuple or dict, print as their
    name (``param_dtype=float32`` rather than ``<class 'jax.numpy.float32'>``)."""
    name = _dtype_name(value)
    if name is not None:
        return name
    if not isinstance(value, list | tuple | dict):
        return repr(value)
    items = list(value.values() if isinstance(value, dict) else value)
    if all(_dtype_name(v) is None for v in items):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_leaf_repr(v)}" for k, v in value.items()) + "}"
    inner = ", ".join(_leaf_repr(v) for v in items)
    if isinstance(value, list):
        return f"[{inner}]"
    return f"({inner},)" if len(items) == 1 else f"({inner})"


def _value_repr(value: Any, depth: int, seen: set[int]) -> str:
    from nnx.object import ARRAY_TYPES, GraphNode, List
    from nnx.state import State
    from nnx.variables import Variable

    if isinstance(value, Variable | GraphNode | State) and not isinstance(value, List | dict):
        return _node_repr(value, depth, seen)
    if isinstance(value, ARRAY_TYPES):
        return _array_repr(value)
    if isinstance(value, list | tuple):
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
        if not any(_is_rich(v) for v in value):
            return _leaf_repr(list(value) if isinstance(value, list) else value)
        pad = _INDENT * (depth + 1)
        inner = ",\n".join(pad + _value_repr(v, depth + 1, seen) for v in value)
        return f"{open_}\n{inner}\n{_INDENT * depth}{close}"
    if isinstance(value, dict):
        if not any(_is_rich(v) for v in value.values()):
            return _leaf_repr(dict(value))
        pad = _INDENT * (depth + 1)
        inner = ",\n".join(
            f"{pad}{k!r}: {_value_repr(v, depth + 1, seen)}" for k, v in value.items()
        )
        return f"{{\n{inner}\n{_INDENT * depth}}}"
    return _leaf_repr(value)


def _is_rich(value: Any) -> bool:
    from nnx.object import ARRAY_TYPES, GraphNode
    from nnx.variables import Variable

    return isinstance(value, (Variable, GraphNode, *ARRAY_TYPES, list, tuple, dict))


def _node_repr(obj: Any, depth: int, seen: set[int]) -> str:
    from nnx.state import State
    from nnx.variables import Variable

    name = type(obj).__name__
    if id(obj) in seen:
        return f"{name}(...)"
    if isinstance(obj, Variable):
        items = [("value", obj._raw_value), *obj._metadata.items()]
    elif isinstance(obj, State):
        items = list(obj._mapping.items())
    else:
        seen = seen | {id(obj)}
        items = list(dict.items(vars(obj)))
    if not items:
        return f"{name}()"
    pad = _INDENT * (depth + 1)
    header = name + "("
    if isinstance(obj, Variable):
        size = getattr(obj._raw_value, "size", None)
        nbytes = getattr(obj._raw_value, "nbytes", None)
        if size is not None and nbytes is not None:
            header += f" # {size:,} ({_bytes(nbytes)})"
    lines = [
        f"{pad}{k if isinstance(k, str) else repr(k)}={_value_repr(v, depth + 1, seen)}"
        if not isinstance(obj, State)
        else f"{pad}{k!r}: {_value_repr(v, depth + 1, seen)}"
        for k, v in items
    ]
    if isinstance(obj, State):
        return "State({\n" + ",\n".join(lines) + "\n" + _INDENT * depth + "})"
    return header + "\n" + ",\n".join(lines) + "\n" + _INDENT * depth + ")"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n} B"


def object_repr(obj: Any) -> str:
    """A nested, indented repr of a graph node or Variable that survives cycles."""
    return _node_repr(obj, 0, set())


def state_repr(state: Any) -> str:
    return _node_repr(state, 0, set())


def graphdef_repr(graphdef: Any) -> str:
    """A compact description of a GraphDef: node types, Variable types and static attributes."""
    from nnx.graph import LEAF
    from nnx.statics import Static

    def render(d: Any, depth: int) -> str:
        pad = _INDENT * (depth + 1)
        if type(d) is Static:
            return _leaf_repr(d.value)
        if d is LEAF:
            return "Leaf"
        kind = d[0]
        if kind == "ref":
            return f"Ref({d[1]})"
        if kind == "var":
            return f"{d[1].__name__}Def(index={d[2]})"
        if kind == "pytree":
            inner = ",\n".join(pad + render(c, depth + 1) for c in d[2])
            return f"Pytree({d[1]},\n{inner}\n{_INDENT * depth})"
        _, typ, index, children = d
        if not children:
            return f"{typ.__name__}Def(index={index})"
        inner = ",\n".join(f"{pad}{k}={render(c, depth + 1)}" for k, c in children)
        return f"{typ.__name__}Def(index={index},\n{inner}\n{_INDENT * depth})"

    return "GraphDef(" + render(graphdef.root, 0) + ")"


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "ZMQ" in type(shell).__name__


def display(*objs: Any) -> None:
    """Show objects: treescope in a notebook when installed, else their text repr."""
    if _in_notebook():
        try:
            import treescope

            for obj in objs:
                treescope.display(obj)
            return
        except ImportError:
            pass
    for obj in objs:
        print(obj)


def treescope_repr(obj: Any, path: Any, subtree_renderer: Any) -> Any:
    """Render a graph node or State with treescope's object-constructor style."""
    from treescope import repr_lib

    from nnx.state import State

    if isinstance(obj, State):
        attributes = dict(obj._mapping)
    else:
        attributes = dict(dict.items(vars(obj)))
    return repr_lib.render_object_constructor(
        object_type=type(obj),
        attributes=attributes,
        path=path,
        subtree_renderer=subtree_renderer,
        roundtrippable=False,
    )
