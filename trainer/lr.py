"""Learning-rate control without recompiling: ``inject_hyperparams`` state, or a chained multiplier.

When the user's optax transformation was built with ``optax.inject_hyperparams``, its state holds
``hyperparams['learning_rate']`` as an array: reading and writing it changes the rate at the next
step. Any other transformation gets ``scale_by_lr_scale()`` chained after it, whose state holds a
float32 multiplier (``trainer.lr_scale``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    import optax


class LrScaleState(NamedTuple):
    """The state of ``scale_by_lr_scale``: one float32 multiplier."""

    scale: jax.Array


def scale_by_lr_scale() -> optax.GradientTransformation:
    """An optax transformation multiplying the updates by an adjustable scalar (initially 1)."""

    def init(params: Any) -> LrScaleState:
        del params
        return LrScaleState(scale=jnp.ones((), jnp.float32))

    def update(updates: Any, state: LrScaleState, params: Any = None) -> tuple[Any, LrScaleState]:
        del params
        scaled = jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates)
        return scaled, state

    import optax

    return optax.GradientTransformation(init, update)


def _has_lr(node: Any) -> bool:
    hyper = getattr(node, "hyperparams", None)
    return isinstance(hyper, dict) and "learning_rate" in hyper


def find_hyperparams(opt_state: Any) -> dict[str, Any] | None:
    """The ``hyperparams`` dict holding ``learning_rate`` in an optax state, or None."""
    for node in jax.tree.leaves(opt_state, is_leaf=_has_lr):
        if _has_lr(node):
            return node.hyperparams
    return None


def find_lr_scale(opt_state: Any) -> LrScaleState | None:
    """The ``LrScaleState`` inside an optax state, or None."""
    for node in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, LrScaleState)):
        if isinstance(node, LrScaleState):
            return node
    return None


def replace_lr_scale(opt_state: Any, value: float) -> Any:
    """A copy of ``opt_state`` whose ``LrScaleState`` holds ``value`` (same structure)."""

    def swap(node: Any) -> Any:
        if isinstance(node, LrScaleState):
            return LrScaleState(scale=jnp.asarray(value, jnp.float32))
        return node

    return jax.tree.map(swap, opt_state, is_leaf=lambda x: isinstance(x, LrScaleState))


def replace_learning_rate(opt_state: Any, value: float) -> Any:
    """A copy of ``opt_state`` whose ``learning_rate`` hyperparameter is a new array ``value``.

    Nothing is changed in place: the hyperparams dict and the arrays of ``opt_state`` (which the
    caller may still hold, or may have donated) stay as they are.
    """
    if find_hyperparams(opt_state) is None:
        raise AttributeError(
            "The optimizer was not built with optax.inject_hyperparams, so its learning rate "
            "cannot be set; set trainer.lr_scale instead, or build it as "
            "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)."
        )
    done = False

    def swap(node: Any) -> Any:
        nonlocal done
        if done or not _has_lr(node):
            return node
        done = True
        old = node.hyperparams["learning_rate"]
        new = jnp.asarray(value, dtype=jnp.asarray(old).dtype)
        return node._replace(hyperparams={**node.hyperparams, "learning_rate": new})

    return jax.tree.map(swap, opt_state, is_leaf=_has_lr)
