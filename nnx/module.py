"""Module: the base class of layers and models, and ``iter_modules``.

``nnx.view`` / ``nnx.with_attributes`` / ``nnx.view_info`` (copies with other modes) are in
``nnx._views`` and ``nnx.capture`` (collecting sown values) in ``nnx._capture``; both are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from nnx import filterlib
from nnx._typing import Path
from nnx._walks import iter_children, iter_graph, iter_module_children
from nnx.object import Object
from nnx.variablelib import Perturbation, Variable, variable_type_from_name


def _append(xs: tuple, x: Any) -> tuple:
    return (*xs, x)


def _empty() -> tuple:
    return ()


def _variable_type(variable_type: type[Variable] | str) -> type[Variable]:
    if isinstance(variable_type, str):
        return variable_type_from_name(variable_type)
    return variable_type


def capture_buffer(module: Module, variable_type: type[Variable]) -> Variable | None:
    """The buffer of ``nnx.capture`` for ``variable_type`` on ``module`` (None when no
    capture is running, or it does not collect that type)."""
    for buffer in vars(module).get("__captures__", ()):
        if type(buffer) is variable_type:
            return buffer
    return None


class Module(Object):
    """Base class for layers and models: a graph node with mode switching and ``sow``.

    Create parameters eagerly in ``__init__`` (``self.w = nnx.Param(...)``) and use them in
    ``__call__`` or any other method; submodules are plain attributes.
    """

    def sow(
        self,
        variable_type: type[Variable] | str,
        name: str,
        value: Any,
        reduce_fn: Callable[[Any, Any], Any] = _append,
        init_fn: Callable[[], Any] = _empty,
    ) -> bool:
        """Record ``value`` under ``name`` (a tuple of values by default): in the running
        ``nnx.capture`` when there is one, else in a Variable attribute ``name``.

        Args:
          variable_type: the Variable type (e.g. ``nnx.Intermediate``) or a collection name.
          name: the name to store under.
          value: the value to record.
          reduce_fn: combines the stored value and the new one.
          init_fn: the starting value when nothing is stored yet.

        Returns:
          False when a capture is running that does not collect ``variable_type``.
        """
        variable_type = _variable_type(variable_type)
        if "__captures__" in vars(self):
            buffer = capture_buffer(self, variable_type)
            if buffer is None:
                return False
            stored = dict(buffer.get_raw_value())
            stored[name] = reduce_fn(stored[name] if name in stored else init_fn(), value)
            buffer.set_raw_value(stored)
            return True
        current = vars(self).get(name)
        if current is None:
            setattr(self, name, variable_type(reduce_fn(init_fn(), value)))
        elif not isinstance(current, Variable):
            raise ValueError(
                f"sow: expected {type(self).__name__}.{name!r} to be a Variable, got "
                f"{type(current).__name__}; sow under another name."
            )
        elif not isinstance(current, variable_type):
            raise ValueError(
                f"sow: expected {type(self).__name__}.{name!r} to be of type "
                f"{variable_type.__name__!r}, got {type(current).__name__!r}."
            )
        else:
            current.set_value(reduce_fn(current.get_value(), value))
        return True

    def perturb(
        self, name: str, value: Any, variable_type: type[Variable] | str = Perturbation
    ) -> Any:
        """Return ``value`` plus a zero-valued perturbation stored under ``name``, so that the
        gradient with respect to the perturbation is the gradient at this activation (in the
        running ``nnx.capture``, or in a Variable attribute ``name``).

        Args:
          name: the name of the perturbation.
          value: the activation (use the returned value in its place).
          variable_type: the Variable type of the perturbation.
        """
        variable_type = _variable_type(variable_type)
        if "__captures__" in vars(self):
            buffer = capture_buffer(self, variable_type)
            if buffer is None:
                return value
            stored = buffer.get_raw_value()
            if name not in stored:
                stored = {**stored, name: jax.tree.map(jnp.zeros_like, value)}
                buffer.set_raw_value(stored)
            return stored[name] + value
        current = vars(self).get(name)
        if current is None:
            current = variable_type(jax.tree.map(jnp.zeros_like, value))
            setattr(self, name, current)
        elif not isinstance(current, variable_type):
            raise ValueError(
                f"perturb: expected {type(self).__name__}.{name!r} to be of type "
                f"{variable_type.__name__!r}, got {type(current).__name__!r}."
            )
        return current.get_value() + value

    def iter_modules(self) -> Iterator[tuple[Path, Module]]:
        """Yield ``(path, module)`` for every Module in the graph, this one last."""
        return iter_modules(self)

    def iter_children(self) -> Iterator[tuple[Any, Module]]:
        """Yield ``(name, module)`` for the direct submodules."""
        for key, child in iter_children(self):
            if isinstance(child, Module):
                yield key, child

    def set_attributes(
        self, *filters: Any, raise_if_not_found: bool = True, graph: bool | None = None,
        **attributes: Any,
    ) -> None:
        """Set attributes on every submodule (matching ``filters``) that already has them.

        Args:
          *filters: restrict to modules matching these filters (e.g. ``nnx.Dropout``).
          raise_if_not_found: raise if some attribute exists on no module.
          graph: graph mode (True) or tree mode (False); None: the current setting.
          **attributes: attribute names and values.
        """
        predicate = filterlib.to_predicate(filters) if filters else None
        remaining = set(attributes)
        for path, module in iter_modules(self, graph=graph):
            if predicate is not None and not predicate(path, module):
                continue
            for name, value in attributes.items():
                if hasattr(module, name):
                    remaining.discard(name)
                    setattr(module, name, value)
        if remaining and raise_if_not_found:
            raise ValueError(
                "Could not find at least one instance of the following attributes: "
                f"{sorted(remaining)} (no selected module has them)."
            )

    def train(self, **attributes: Any) -> Module:
        """Switch to training mode: ``deterministic=False``, ``use_running_average=False``."""
        self.set_attributes(
            deterministic=False, use_running_average=False, **attributes, raise_if_not_found=False
        )
        return self

    def eval(self, **attributes: Any) -> Module:
        """Switch to evaluation mode: ``deterministic=True``, ``use_running_average=True``."""
        self.set_attributes(
            deterministic=True, use_running_average=True, **attributes, raise_if_not_found=False
        )
        return self


M = Module


def iter_modules(module: Any, /, *, graph: bool | None = None) -> Iterator[tuple[Path, Module]]:
    """Yield ``(path, module)`` for every Module reachable from ``module`` (itself last).

    Args:
      module: the root of the walk.
      graph: graph mode (True) or tree mode (False); None: the current setting.
    """
    for path, value in iter_graph(module, graph=graph):
        if isinstance(value, Module):
            yield path, value


from nnx._capture import capture  # noqa: E402 - builds on Module
from nnx._views import view, view_info, with_attributes  # noqa: E402 - builds on Module

__all__ = [
    "M", "Module", "capture", "iter_children", "iter_module_children", "iter_modules", "view",
    "view_info", "with_attributes",
]
