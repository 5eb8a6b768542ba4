"""Copies of a model in another mode that share its Variables: ``nnx.view`` (through each
module's ``set_view``), ``nnx.with_attributes`` and ``nnx.view_info``.

``nnx.view(model, deterministic=True)`` gives an evaluation copy: the modules are new objects
with the mode changed, the Variables are the model's own, so training the model is seen by
the view and the model's mode stays as it was.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from nnx import filterlib
from nnx._walks import recursive_map
from nnx.module import Module

A = TypeVar("A")
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def view(
    node: A, /, *, only: Any = ..., raise_if_not_found: bool = True, graph: bool | None = None,
    **kwargs: Any,
) -> A:
    """A copy of ``node`` (sharing its Variables) where every module with a ``set_view``
    method matching ``only`` was given the keywords it takes (``deterministic=True``...).

    Args:
      node: the model.
      only: a filter on the modules to change (e.g. ``nnx.Dropout``).
      raise_if_not_found: raise if some keyword is taken by no ``set_view``.
      graph: graph mode (True) or tree mode (False); None: the current setting.
      **kwargs: the view settings.
    """
    predicate = filterlib.to_predicate(only)
    unused = set(kwargs)

    def set_view(path: tuple, x: Any) -> Any:
        method = getattr(x, "set_view", None)
        if isinstance(x, Module) and method is not None and predicate(path, x):
            params = inspect.signature(method).parameters.values()
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                method(**kwargs)
                unused.clear()
            else:
                names = {p.name for p in params if p.kind in _NAMED}
                method(**{k: v for k, v in kwargs.items() if k in names})
                unused.difference_update(names)
        return x

    out = recursive_map(set_view, node, graph=graph)
    if raise_if_not_found and unused:
        raise ValueError(
            f"Unused keys found in nnx.view: {sorted(unused)}: no selected module's set_view "
            "takes them (see nnx.view_info for the keywords each module takes)."
        )
    return out


def with_attributes(
    node: A, /, *, only: Any = ..., raise_if_not_found: bool = True, graph: bool | None = None,
    **attributes: Any,
) -> A:
    """A copy of ``node`` (sharing its Variables) where every module matching ``only`` that
    has one of ``attributes`` has it set; ``node`` itself is unchanged.

    Args:
      node: the model.
      only: a filter on the modules to change.
      raise_if_not_found: raise if some attribute is found on no selected module.
      graph: graph mode (True) or tree mode (False); None: the current setting.
      **attributes: attribute names and values.
    """
    predicate = filterlib.to_predicate(only)
    remaining = set(attributes)

    def set_attributes(path: tuple, x: Any) -> Any:
        if isinstance(x, Module) and predicate(path, x):
            for name, value in attributes.items():
                if hasattr(x, name):
                    setattr(x, name, value)
                    remaining.discard(name)
        return x

    out = recursive_map(set_attributes, node, graph=graph)
    if remaining and raise_if_not_found:
        raise ValueError(
            "Could not find at least one instance of the following attributes: "
            f"{sorted(remaining)} (no selected module has them)."
        )
    return out


def _docstring_args(doc: str) -> dict[str, str]:
    """``name -> description`` from the ``Args:`` section of a Google-style docstring, each
    description indented by four spaces."""
    start = doc.find("Args:\n")
    if start < 0:
        return {}
    end = doc.find("Returns:\n", start)
    lines = doc[start + len("Args:\n"):end if end >= 0 else None].split("\n")
    heads = [i for i, line in enumerate(lines) if line.startswith("  ") and not line.startswith("    ")]
    out = {}
    for i, head in enumerate(heads):
        stop = heads[i + 1] if i + 1 < len(heads) else len(lines)
        name, _, first = lines[head].partition(":")
        body = [" " * 4 + first.strip(), *lines[head + 1:stop]]
        out[name.strip()] = "\n".join(body).rstrip("\n")
    return out


def view_info(node: Any, /, *, only: Any = ..., graph: bool | None = None) -> str:
    """What ``nnx.view`` can set on ``node``: per module class with a ``set_view`` (matching
    ``only``), its keywords with their types, defaults and documentation.

    Args:
      node: the model.
      only: a filter on the modules to describe.
      graph: graph mode (True) or tree mode (False); None: the current setting.
    """
    predicate = filterlib.to_predicate(only)
    classes: set[type] = set()

    def collect(path: tuple, x: Any) -> Any:
        if hasattr(x, "set_view") and predicate(path, x):
            classes.add(type(x))
        return x

    recursive_map(collect, node, graph=graph)
    lines = []
    for cls in sorted(classes, key=lambda c: c.__qualname__):
        lines.append(f"{cls.__qualname__}:")
        signature = inspect.signature(cls.set_view)
        doc = inspect.getdoc(cls.set_view)
        if not isinstance(doc, str):
            lines.append(f"  set_view{signature}")
            continue
        described = _docstring_args(doc)
        for name, param in signature.parameters.items():
            if name in ("self", "args", "kwargs"):
                continue
            default = "" if param.default is inspect.Parameter.empty else f" = {param.default}"
            lines.append(f"  {name}: {param.annotation}{default}")
            if name in described:
                lines.append(described[name])
    return "\n".join(lines)
