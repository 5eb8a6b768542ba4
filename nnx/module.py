"""Module: the base class of layers and models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax.numpy as jnp

from nnx import filterlib
from nnx.graph import iter_children, iter_graph
from nnx.object import Object
from nnx.variablelib import Perturbation, Variable, variable_type_from_name


def _append(xs: tuple, x: Any) -> tuple:
    return (*xs, x)


def _empty() -> tuple:
    return ()


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
    ) -> None:
        """Record ``value`` in a Variable attribute ``name`` (a tuple of values by default).

        Args:
          variable_type: the Variable type (e.g. ``nnx.Intermediate``) or a collection name.
          name: the attribute to store into.
          value: the value to record.
          reduce_fn: combines the stored value and the new one.
          init_fn: the starting value when the attribute does not exist yet.
        """
        if isinstance(variable_type, str):
            variable_type = variable_type_from_name(variable_type)
        current = vars(self).get(name)
        if isinstance(current, variable_type):
            current.value = reduce_fn(current.value, value)
        elif current is None:
            setattr(self, name, variable_type(reduce_fn(init_fn(), value)))
        else:
            raise ValueError(
                f"sow: {type(self).__name__}.{name} already holds a {type(current).__name__}, "
                f"not a {variable_type.__name__}."
            )

    def perturb(self, name: str, value: Any, variable_type: type[Variable] = Perturbation) -> Any:
        """Add a zero-valued Variable ``name`` to ``value`` so gradients reach the activation."""
        if name not in vars(self):
            setattr(self, name, variable_type(jnp.zeros_like(value)))
        return value + getattr(self, name).value

    def iter_modules(self) -> Iterator[tuple[tuple, Module]]:
        """Yield ``(path, module)`` for every Module in the graph, this one last."""
        for path, value in iter_graph(self):
            if isinstance(value, Module):
                yield path, value

    def iter_children(self) -> Iterator[tuple[Any, Module]]:
        """Yield ``(name, module)`` for the direct submodules."""
        for key, child in iter_children(self):
            if isinstance(child, Module):
                yield key, child

    def set_attributes(
        self, *filters: Any, raise_if_not_found: bool = True, **attributes: Any
    ) -> None:
        """Set attributes on every submodule (matching ``filters``) that already has them.

        Args:
          *filters: restrict to modules matching these filters (e.g. ``nnx.Dropout``).
          raise_if_not_found: raise if some attribute exists on no module.
          **attributes: attribute names and values.
        """
        predicate = filterlib.to_predicate(filters) if filters else None
        remaining = set(attributes)
        for path, module in self.iter_modules():
            if predicate is not None and not predicate(path, module):
                continue
            for name, value in attributes.items():
                if hasattr(module, name):
                    remaining.discard(name)
                    setattr(module, name, value)
        if remaining and raise_if_not_found:
            raise ValueError(
                f"set_attributes: no module has the attribute(s) {sorted(remaining)}."
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
