"""The model as the compiled steps see it: a ``ModelSpec`` and flat arrays.

The model is split once per ``fit`` / ``evaluate`` / ``predict`` into a ``ModelSpec`` (static: the
GraphDefs of train and eval mode, which leaves are trained) and arrays: the trained leaves as a
nested dict (what optax sees, shaped like ``nnx.state(model, wrt)``) and the other leaves
(BatchNorm statistics, RNG counters, frozen parameters) as a tuple.

This is built on ``nnx.flatten`` / ``nnx.unflatten`` (the same graph walk as ``nnx.split`` /
``nnx.merge``), but not on ``nnx.State``: a step would otherwise rebuild a nested State of
Variables and filter it on every call, where the Trainer needs fixed leaf positions (computed once
here), the trained leaves in optax's pytree order, and one GraphDef per mode.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import nnx

Path = tuple[Any, ...]


class TrainState(NamedTuple):
    """Everything a compiled step reads and returns (a pytree of arrays).

    Attributes:
      params: the trained leaves, a nested dict like ``nnx.state(model, wrt).to_pure_dict()``.
      others: the other leaves of the model, in GraphDef order.
      opt_state: the optax state (None in evaluate / predict).
      metrics: the running metrics (see ``metrics.init_state``): ``{"means": float32 (k, 2)
        running (total, weight) rows, "objects": {name: metric-object leaves}}``; ``{}`` before
        the first batch is seen.
      counters: one int32 vector indexed by ``STEP``, ``POS`` (batch index in the epoch),
        ``NONFINITE`` (steps with a non-finite loss or gradients), ``FIRST_NONFINITE`` (the first
        such step, or -1), ``STREAK`` (such steps in a row, up to now), ``LONGEST`` (the
        longest such streak so far), ``BAD_LABEL`` (1 once an integer target outside the
        classes was seen) and ``BAD_LABEL_VALUE`` (the first such target).
    """

    params: Any
    others: tuple
    opt_state: Any
    metrics: dict
    counters: jax.Array


# Each buffer a compiled step takes and returns costs dispatch time on every call, so the
# scalars are packed: the counters into one int32 vector, the running means into one array.
STEP, POS, NONFINITE, FIRST_NONFINITE, STREAK, LONGEST, BAD_LABEL, BAD_LABEL_VALUE = range(8)
NEXT_POS = np.array([0, 1, 0, 0, 0, 0, 0, 0], np.int32)  # an elementwise add fuses; .at[POS].add does not
NEXT_STEP = np.array([1, 0, 0, 0, 0, 0, 0, 0], np.int32)


def new_counters(step: int = 0, pos: int = 0) -> jax.Array:
    """Fresh counters on the device."""
    return copy_arrays([np.array([step, pos, 0, -1, 0, 0, 0, 0], np.int32)])[0]


@jax.jit
def set_position(counters: jax.Array, pos: jax.Array) -> jax.Array:
    """``counters`` with ``POS`` set to ``pos`` (jitted: an eager scatter dispatches slowly)."""
    return counters.at[POS].set(pos)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSpec:
    """The static description of a split model (identity-hashed; one per split)."""

    graphdef_train: Any
    graphdef_eval: Any
    paths: tuple[Path, ...]
    param_order: tuple[int, ...]  # GraphDef leaf index of each trained leaf, in pytree order
    other_index: tuple[int, ...]  # GraphDef leaf index of each other leaf
    variables: tuple[Any, ...]  # the user's leaves (Variables or raw arrays), GraphDef order
    train_kw: str | None  # 'train' or 'training' when the model's __call__ takes it
    graphdef_given: Any = None  # the GraphDef in the mode the model was in when split

    @property
    def num_leaves(self) -> int:
        return len(self.paths)

    @property
    def key(self) -> tuple:
        """What the compiled code depends on (for the jit cache)."""
        return (self.graphdef_train, self.graphdef_eval, self.param_order, self.other_index, self.train_kw)


def _nest(paths: list[Path], values: list[Any]) -> dict[Any, Any]:
    root: dict[Any, Any] = {}
    for path, value in zip(paths, values, strict=True):
        node = root
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return root


def _raw(x: Any) -> Any:
    return x.get_value() if isinstance(x, nnx.Variable) else x


def train_keyword(model: Any) -> str | None:
    """'train' or 'training' when ``model.__call__`` accepts that keyword, else None."""
    if not callable(model):
        return None
    try:
        params = inspect.signature(model).parameters
    except (TypeError, ValueError):
        return None
    for name in ("train", "training"):
        p = params.get(name)
        if p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            return name
    return None


def _mode_attributes(model: Any) -> list[tuple[Any, str, Any]]:
    out = []
    if not hasattr(model, "iter_modules"):
        return out
    for _, module in model.iter_modules():
        for attr in ("deterministic", "use_running_average"):
            if attr in vars(module):
                out.append((module, attr, vars(module)[attr]))
    return out


def restore_mode(saved: list[tuple[Any, str, Any]]) -> None:
    """Put back the mode attributes recorded by ``split_model``."""
    for module, attr, value in saved:
        if vars(module).get(attr, object()) is not value:
            setattr(module, attr, value)


def split_model(
    model: Any, wrt: Any, previous: ModelSpec | None = None
) -> tuple[ModelSpec, list[Any], list[tuple[Any, str, Any]]]:
    """Split ``model`` into a ModelSpec and its leaves; also return its current mode to restore.

    Sown ``nnx.Intermediate`` Variables are removed from the model first: they grow on every
    call, so they cannot be part of a fixed State. ``previous`` (a spec of the same model) is
    returned again when the model still has its GraphDef and Variables: one flatten instead of
    switching modes twice.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"Trainer(model=...) expects an nnx.Module, got {type(model).__name__}.")
    graphdef_given, leaves = nnx.flatten(model)
    if (
        previous is not None
        and graphdef_given == previous.graphdef_given
        and all(a is b for a, b in zip(leaves, previous.variables, strict=True))
    ):
        return previous, leaves, _mode_attributes(model)
    if len(nnx.state(model, nnx.Intermediate)):
        nnx.pop(model, nnx.Intermediate)
        graphdef_given, _ = nnx.flatten(model)
    saved = _mode_attributes(model)
    try:
        model.eval()
        graphdef_eval, _ = nnx.flatten(model)
        model.train()
        graphdef_train, leaves = nnx.flatten(model)
    finally:
        restore_mode(saved)
    paths = graphdef_train.paths
    predicate = nnx.filterlib.to_predicate(wrt)
    trained = [i for i, (p, v) in enumerate(zip(paths, leaves, strict=True)) if isinstance(v, nnx.Variable) and predicate(p, v)]
    if not trained:
        kinds = sorted({type(v).__name__ for v in leaves})
        raise ValueError(
            f"Trainer(wrt={wrt!r}) matches no Variable of {type(model).__name__}; its leaves are "
            f"of types {kinds}. Pass a filter that selects the Variables to train (e.g. nnx.Param)."
        )
    index_tree = _nest([paths[i] for i in trained], trained)
    param_order = tuple(jax.tree.leaves(index_tree))
    others = tuple(i for i in range(len(leaves)) if i not in set(trained))
    spec = ModelSpec(
        graphdef_train, graphdef_eval, tuple(paths), param_order, others, tuple(leaves), train_keyword(model),
        graphdef_given,
    )
    return spec, leaves, saved


@jax.jit
def copy_arrays(values: list[jax.Array]) -> list[jax.Array]:
    """Fresh buffers holding ``values`` (one dispatch instead of one per array)."""
    return [jnp.copy(v) for v in values]


def initial_arrays(spec: ModelSpec, copy: bool) -> tuple[dict, tuple]:
    """The trained leaves as a nested dict and the other leaves, copied when ``copy``."""
    values = [_raw(v) for v in spec.variables]
    if copy:
        where = [i for i, v in enumerate(values) if hasattr(v, "shape")]
        for i, v in zip(where, copy_arrays([values[i] for i in where]), strict=True):
            values[i] = v
    params = _nest([spec.paths[i] for i in spec.param_order], [values[i] for i in spec.param_order])
    return params, tuple(values[i] for i in spec.other_index)


def write_back(spec: ModelSpec, params: Any, others: tuple) -> None:
    """Write arrays into the user's Variables (in place, identities kept)."""
    for i, value in zip(spec.param_order, jax.tree.leaves(params), strict=True):
        spec.variables[i].set_value(value)
    for i, value in zip(spec.other_index, others, strict=True):
        var = spec.variables[i]
        if isinstance(var, nnx.Variable):
            var.set_value(value)


def merge(spec: ModelSpec, params: Any, others: tuple, training: bool) -> Any:
    """A fresh model (inside a trace) from the arrays; ``training`` picks the GraphDef."""
    leaves: list[Any] = [None] * spec.num_leaves
    for i, value in zip(spec.param_order, jax.tree.leaves(params), strict=True):
        leaves[i] = value
    for i, value in zip(spec.other_index, others, strict=True):
        leaves[i] = value
    graphdef = spec.graphdef_train if training else spec.graphdef_eval
    return nnx.unflatten(graphdef, leaves)


def read_others(spec: ModelSpec, model: Any, given: tuple) -> tuple:
    """The current values of the non-trained leaves of a merged model (sown Variables dropped).

    ``given``: the values the model was merged from. A plain array attribute (not a Variable)
    the step replaced, or a Variable it created, raises: the Trainer carries the Variables the
    model had when split, and would otherwise drop the new values when it writes back."""
    graphdef, leaves = nnx.flatten(model)
    by_path = dict(zip(graphdef.paths, leaves, strict=True))
    out = []
    for i, before in zip(spec.other_index, given, strict=True):
        path = spec.paths[i]
        where = "/".join(map(str, path))
        if path not in by_path:
            raise ValueError(
                f"The model lost its Variable at '{where}' during a step; "
                "a step may change Variable values but not remove them."
            )
        now = by_path[path]
        if not isinstance(spec.variables[i], nnx.Variable) and now is not before:
            raise ValueError(
                f"The model's plain array attribute '{where}' was replaced during a train step. The "
                "Trainer carries a model's changing state in Variables: make it one (for a "
                f"counter or a statistic, e.g. nnx.BatchStat(...)) and update it with "
                f"'.{path[-1]}[...] = ...'."
            )
        out.append(_raw(now))
    known = set(spec.paths)
    for path, leaf in by_path.items():
        if path not in known and not isinstance(leaf, nnx.Intermediate):
            raise ValueError(
                f"The model created {type(leaf).__name__ if isinstance(leaf, nnx.Variable) else 'a plain array'} "
                f"'{'/'.join(map(str, path))}' during a train "
                "step; the Trainer carries the Variables the model has when fit starts. Create it "
                "in __init__, or call the model once on a batch before fit."
            )
    return tuple(out)
