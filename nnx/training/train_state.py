"""TrainState: an immutable pytree of a GraphDef, parameters, optax state and a step count,
for functional training loops under ``jax.jit``."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from nnx.graph import GraphDef, clone, merge, split
from nnx.statelib import State

if TYPE_CHECKING:  # optax is imported when it is used: it adds ~50 ms to `import nnx`
    import optax

_STATIC_FIELDS = ("graphdef", "tx")


def _register(cls: type) -> None:
    fields = [f.name for f in dataclasses.fields(cls)]
    jax.tree_util.register_dataclass(
        cls,
        data_fields=[f for f in fields if f not in _STATIC_FIELDS],
        meta_fields=[f for f in fields if f in _STATIC_FIELDS],
    )


class _ApplyCaller:
    """``state.apply(...)(*args)`` or ``state.apply(...).method(*args)``: merge a copy, call,
    split; the given States are not changed."""

    def __init__(self, graphdef: GraphDef, states: tuple[State, ...], path: tuple = ()):
        self._graphdef = graphdef
        self._states = states
        self._path = path

    def __getattr__(self, name: str) -> _ApplyCaller:
        return _ApplyCaller(self._graphdef, self._states, (*self._path, ("attr", name)))

    def __getitem__(self, key: Any) -> _ApplyCaller:
        return _ApplyCaller(self._graphdef, self._states, (*self._path, ("item", key)))

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, tuple[GraphDef, State]]:
        module = clone(merge(self._graphdef, *self._states))
        target = module
        for kind, key in self._path:
            target = getattr(target, key) if kind == "attr" else target[key]
        out = target(*args, **kwargs)
        return out, split(module)


@dataclasses.dataclass(frozen=True)
class TrainState:
    """An immutable training state: ``graphdef``, ``params``, ``opt_state``, ``step``, ``tx``.

    A registered pytree (``graphdef`` and ``tx`` are static), so it passes through ``jax.jit``.
    Subclasses add fields by annotation (``batch_stats: nnx.State``) and are dataclasses too.

    Example::

      >>> graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
      >>> state = MyTrainState.create(graphdef, params=params, tx=optax.sgd(0.1),
      ...                             batch_stats=batch_stats)
      >>> y, (graphdef, new_state) = state.apply('params', 'batch_stats')(x)
      >>> state = state.apply_gradients(grads)
    """

    graphdef: GraphDef
    params: State
    opt_state: Any
    step: jax.Array
    tx: optax.GradientTransformation

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True)(cls)
        _register(cls)

    @classmethod
    def create(
        cls,
        graphdef: GraphDef,
        *,
        params: State,
        tx: optax.GradientTransformation,
        step: int = 0,
        **kwargs: Any,
    ) -> TrainState:
        """A new state with ``tx.init(params)`` as its optax state.

        Args:
          graphdef: the model's GraphDef (from ``nnx.split``).
          params: the parameters to optimize.
          tx: an optax ``GradientTransformation``.
          step: the initial step count.
          **kwargs: the values of fields added by a subclass.
        """
        return cls(
            graphdef=graphdef, params=params, opt_state=tx.init(params),
            step=jnp.asarray(step), tx=tx, **kwargs,
        )

    def replace(self, **changes: Any) -> TrainState:
        """A copy with the given fields replaced."""
        return dataclasses.replace(self, **changes)

    def apply(self, state: State | str, *states: State | str) -> _ApplyCaller:
        """A caller that merges ``graphdef`` with the given States (or names of State fields),
        calls the model (or a method: ``.apply('params').encode(x)``) and returns
        ``(output, (graphdef, state))`` with the model's state after the call (this
        TrainState's States are not changed)."""
        resolved = []
        for s in (state, *states):
            if isinstance(s, str):
                value = getattr(self, s)
                if not isinstance(value, State):
                    raise TypeError(
                        f"{type(self).__name__}.apply({s!r}): the field {s!r} is a "
                        f"{type(value).__name__}, expected a State."
                    )
                s = value
            resolved.append(s)
        return _ApplyCaller(self.graphdef, tuple(resolved))

    def apply_gradients(self, grads: State, **kwargs: Any) -> TrainState:
        """A new state one optax step on: parameters and optax state updated, step + 1.

        Args:
          grads: gradients shaped like ``params``.
          **kwargs: other fields to replace at the same time.
        """
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        import optax

        params = optax.apply_updates(self.params, updates)
        return self.replace(params=params, opt_state=opt_state, step=self.step + 1, **kwargs)


_register(TrainState)

__all__ = ["TrainState"]
