"""``nnx.capture``: run a function and collect what its modules ``sow`` (and ``perturb``).

While the function runs, every module of the model holds a ``__captures__`` attribute: one
Variable per collected type, whose value is a dict from names to values. ``Module.sow`` and
``Module.perturb`` write there instead of into attributes of their own. Being Variables of
the model, the buffers travel through nnx transforms (a ``@nnx.jit`` method, ``nnx.grad``)
like any other state; when the function returns they are read into a State shaped like the
model and removed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from nnx.module import Module, iter_modules
from nnx.statelib import State
from nnx.variablelib import Variable

_WRAPPED = "_nnx_capturing"


def _by_module(state: Mapping | None) -> dict[tuple, dict[str, Variable]]:
    """``{module path: {name: Variable}}`` for the Variables of ``state``."""
    out: dict[tuple, dict[str, Variable]] = {}
    if state is None:
        return out
    for path, leaf in State.flatten_mapping(state).items():
        if isinstance(leaf, Variable):
            out.setdefault(path[:-1], {})[path[-1]] = leaf
    return out


def _sow_outputs(cls: type, variable_type: type[Variable]) -> list[tuple[str, Any]]:
    """Wrap the public methods (and ``__call__``) defined by ``cls`` so that each sows its
    output under its name; returns what to restore."""
    restore = []
    for name, method in list(vars(cls).items()):
        if not inspect.isfunction(method) or getattr(method, _WRAPPED, False):
            continue
        if name.startswith("_") and name != "__call__":
            continue

        def wrapper(self: Module, *args: Any, __method: Any = method, __name: str = name,
                    **kwargs: Any) -> Any:
            out = __method(self, *args, **kwargs)
            self.sow(variable_type, __name, out)
            return out

        functools.update_wrapper(wrapper, method)
        setattr(wrapper, _WRAPPED, True)
        setattr(cls, name, wrapper)
        restore.append((name, method))
    return restore


def capture(
    fn: Any, *var_types: type[Variable], init: Mapping | None = None,
    method_outputs: type[Variable] | None = None,
) -> Callable[..., Any]:
    """Wrap ``fn`` so that it returns ``(output, state)``: the values sown (``Module.sow``) or
    perturbed (``Module.perturb``) during the call, for each of ``var_types``, as a State
    shaped like the model (one State per type when there are several).

    Args:
      fn: a Module (its ``__call__``), a bound method of one, or a function whose first
        argument is the model; or a Variable type, to use ``capture`` as a decorator.
      *var_types: the Variable types to collect (e.g. ``nnx.Intermediate``).
      init: a State of starting values (e.g. perturbations, to take gradients at them).
      method_outputs: also sow the output of every public method (and ``__call__``) of the
        model's modules, as this Variable type, under the method's name.
    """
    if isinstance(fn, type) and issubclass(fn, Variable):
        types = (fn, *var_types)
        return lambda f: capture(f, *types, init=init, method_outputs=method_outputs)
    owner = fn.__self__ if inspect.ismethod(fn) and isinstance(fn.__self__, Module) else None
    if isinstance(fn, Module):
        owner = fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        model = owner if owner is not None else args[0]
        starting = _by_module(init)
        modules = list(iter_modules(model))
        for path, module in modules:
            buffers: dict[type, dict[str, Any]] = {t: {} for t in var_types}
            for name, var in starting.get(path, {}).items():
                buffers.setdefault(type(var), {})[name] = var.get_value()
            module.__captures__ = tuple(t(values) for t, values in buffers.items())
        restore: list[tuple[type, str, Any]] = []
        if method_outputs is not None:
            for cls in {type(m) for _, m in modules}:
                restore += [(cls, n, m) for n, m in _sow_outputs(cls, method_outputs)]
        try:
            out = fn(*args, **kwargs)
        finally:
            for cls, name, method in restore:
                setattr(cls, name, method)
        collected = State({})
        for path, module in iter_modules(model):
            buffers = vars(module).get("__captures__")
            if buffers is None:
                continue
            for buffer in buffers:
                if type(buffer) in var_types and buffer.get_raw_value():
                    node = collected
                    for key in path:
                        if key not in node:
                            node[key] = State({})
                        node = node[key]
                    for name, value in buffer.get_raw_value().items():
                        node[name] = type(buffer)(value)
            del module.__captures__
        if not var_types:
            return out
        states = collected.split(*var_types) if len(var_types) > 1 else collected
        return (out, *states) if len(var_types) > 1 else (out, states)

    return wrapper
