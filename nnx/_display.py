"""Text and treescope renderings of graph nodes, Variables and States, and ``nnx.display``.

Types opt in through one method, ``_repr_parts(self) -> ReprParts``: the name to print, the
``(key, value)`` pairs to show (``k=v`` lines inside ``Name(...)``, or ``'k': v`` lines inside
``Name({...})`` for a mapping) and an optional comment after the opening parenthesis. This
module knows no nnx type, so every other module may import it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from nnx._typing import ARRAY_TYPES

_INDENT = "  "


class ReprParts(NamedTuple):
    """What ``_repr_parts`` returns; see the module docstring."""

    name: str
    items: list[tuple[Any, Any]]
    mapping: bool = False
    comment: str = ""


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


def leaf_repr(value: Any) -> str:
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
        return "{" + ", ".join(f"{k!r}: {leaf_repr(v)}" for k, v in value.items()) + "}"
    inner = ", ".join(leaf_repr(v) for v in items)
    if isinstance(value, list):
        return f"[{inner}]"
    return f"({inner},)" if len(items) == 1 else f"({inner})"


def _has_parts(value: Any) -> bool:
    return hasattr(type(value), "_repr_parts")


def _is_rich(value: Any) -> bool:
    return _has_parts(value) or isinstance(value, (*ARRAY_TYPES, list, tuple, dict))


def _value_repr(value: Any, depth: int, seen: frozenset[int]) -> str:
    if _has_parts(value):
        return _parts_repr(value, depth, seen)
    if isinstance(value, ARRAY_TYPES):
        return _array_repr(value)
    pad = _INDENT * (depth + 1)
    if isinstance(value, list | tuple):
        if not any(_is_rich(v) for v in value):
            return leaf_repr(list(value) if isinstance(value, list) else value)
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
        inner = ",\n".join(pad + _value_repr(v, depth + 1, seen) for v in value)
        return f"{open_}\n{inner}\n{_INDENT * depth}{close}"
    if isinstance(value, dict):
        if not any(_is_rich(v) for v in value.values()):
            return leaf_repr(dict(value))
        inner = ",\n".join(
            f"{pad}{k!r}: {_value_repr(v, depth + 1, seen)}" for k, v in value.items()
        )
        return f"{{\n{inner}\n{_INDENT * depth}}}"
    return leaf_repr(value)


def _parts_repr(obj: Any, depth: int, seen: frozenset[int]) -> str:
    parts = obj._repr_parts()
    if id(obj) in seen:
        return f"{parts.name}(...)"
    seen = seen | {id(obj)}
    pad = _INDENT * (depth + 1)
    if parts.mapping:
        lines = [f"{pad}{k!r}: {_value_repr(v, depth + 1, seen)}" for k, v in parts.items]
        return f"{parts.name}({{\n" + ",\n".join(lines) + "\n" + _INDENT * depth + "})"
    if not parts.items:
        return f"{parts.name}()"
    lines = [
        f"{pad}{k if isinstance(k, str) else repr(k)}={_value_repr(v, depth + 1, seen)}"
        for k, v in parts.items
    ]
    head = f"{parts.name}( # {parts.comment}" if parts.comment else f"{parts.name}("
    return head + "\n" + ",\n".join(lines) + "\n" + _INDENT * depth + ")"


def format_bytes(n: float) -> str:
    """``'24 B'``, ``'1.5 KB'``, ``'3.2 MB'``: a byte count in decimal units."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n} B"


def object_repr(obj: Any) -> str:
    """A nested, indented repr of an object with ``_repr_parts``; survives cycles."""
    return _parts_repr(obj, 0, frozenset())


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]  # optional
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "ZMQ" in type(shell).__name__


def display(*objs: Any) -> None:
    """Show objects: treescope in a notebook when installed, else their text repr."""
    if _in_notebook():
        try:
            import treescope  # optional dependency

            for obj in objs:
                treescope.display(obj)
            return
        except ImportError:
            pass
    for obj in objs:
        print(obj)


def treescope_repr(obj: Any, path: Any, subtree_renderer: Any) -> Any:
    """Render an object with ``_repr_parts`` in treescope's object-constructor style."""
    from treescope import repr_lib  # optional dependency, only reached from treescope itself

    return repr_lib.render_object_constructor(
        object_type=type(obj),
        attributes=dict(obj._repr_parts().items),
        path=path,
        subtree_renderer=subtree_renderer,
        roundtrippable=False,
    )
