"""The optimizer of a Trainer: an optax transformation or an ``nnx.Optimizer``, its state, and
learning-rate control (``lr.py``) without recompiling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

import nnx
from trainer import lr as lrlib
from trainer import model_state

if TYPE_CHECKING:
    import optax


def _unwrap(tree: Any) -> Any:
    return jax.tree.map(
        lambda v: v.get_value() if isinstance(v, nnx.Variable) else v,
        tree,
        is_leaf=lambda v: isinstance(v, nnx.Variable),
    )


class OptimizerState:
    """The optax transformation the steps apply and its state, kept across calls.

    Args:
      optimizer: an optax ``GradientTransformation``, or an ``nnx.Optimizer`` of ``model``
        (its state is read when training starts and written back after each call).
      model: the Trainer's model.
      wrt: the filter of the trained Variables (an ``nnx.Optimizer``'s own ``wrt`` wins).
    """

    def __init__(self, optimizer: Any, model: Any, wrt: Any):
        self.user = optimizer
        self.nnx_optimizer = None
        if hasattr(optimizer, "tx") and hasattr(optimizer, "model") and not hasattr(optimizer, "init"):
            if optimizer.model is not model:
                raise ValueError(
                    f"Trainer(optimizer=...): the nnx.Optimizer was created for another model "
                    f"({type(optimizer.model).__name__} at {id(optimizer.model):#x}), not this "
                    f"{type(model).__name__} at {id(model):#x}. Pass nnx.Optimizer(model, tx) "
                    "for this model, or the optax transformation itself."
                )
            self.nnx_optimizer = optimizer
            wrt = getattr(optimizer, "wrt", wrt)
            self.tx = optimizer.tx
        elif hasattr(optimizer, "init") and hasattr(optimizer, "update"):
            self.tx = optimizer
        elif callable(optimizer) and getattr(optimizer, "__module__", "").startswith("optax"):
            name = getattr(optimizer, "__name__", "the optimizer")
            raise TypeError(
                f"Trainer(optimizer=...) got the function optax.{name} itself; did you mean "
                f"optax.{name}(learning_rate), e.g. optax.{name}(1e-3)?"
            )
        else:
            raise TypeError(
                f"Trainer(optimizer=...) expects an optax GradientTransformation or an "
                f"nnx.Optimizer, got {type(optimizer).__name__}."
            )
        self.wrt = wrt
        self.full_tx: optax.GradientTransformation | None = None  # with the lr multiplier
        self.state: Any = None
        self._params_def: Any = None

    def describe(self) -> str:
        """The optimizer in a few words: ``nnx.Optimizer``'s class, or the optax function that
        built the transformation (``optax.chain(...)``), from its ``init``'s qualified name."""
        if self.nnx_optimizer is not None:
            return type(self.nnx_optimizer).__name__
        qualname = getattr(getattr(self.tx, "init", None), "__qualname__", "")
        if ".<locals>" not in qualname:
            return type(self.tx).__name__
        return f"optax.{qualname.split('.<locals>')[0]}(...)"

    def ensure(self, params: Any) -> Any:
        """The state for trained leaves shaped like ``params`` (initialized when they change)."""
        params_def = jax.tree.structure(params), tuple(jnp.shape(p) for p in jax.tree.leaves(params))
        if self.state is not None and params_def == self._params_def:
            return self.state
        base_state = self.tx.init(params)
        if self.nnx_optimizer is not None:
            # The nnx.Optimizer keeps its state with States where optax has dicts: same leaves
            # in the same order, so it carries over when the leaves' shapes agree.
            from_opt = jax.tree.leaves(_unwrap(self.nnx_optimizer.opt_state))
            base_leaves, base_def = jax.tree.flatten(base_state)
            if [jnp.shape(a) for a in from_opt] == [jnp.shape(b) for b in base_leaves]:
                base_state = jax.tree.unflatten(base_def, from_opt)
        if lrlib.find_hyperparams(base_state) is not None:
            self.full_tx, state = self.tx, base_state
        else:
            import optax

            self.full_tx = optax.chain(self.tx, lrlib.scale_by_lr_scale())
            state = (base_state, lrlib.scale_by_lr_scale().init(params))
        # distinct buffers everywhere, so that donation never sees one buffer twice
        self.state = jax.tree.map(lambda a: jnp.array(a, copy=True), state)
        self._params_def = params_def
        return self.state

    def live(self, session: Any, model: Any) -> Any:
        """The state in use: the training ``session``'s, else this one (initialized for
        ``model`` on first use)."""
        if session is not None and session.state.opt_state is not None:
            return session.state.opt_state
        if self.state is None:
            spec, _, _ = model_state.split_model(model, self.wrt)
            self.ensure(model_state.initial_arrays(spec, copy=False)[0])
        return self.state

    def replace(self, session: Any, new: Any) -> None:
        """Use ``new`` as the state (in the training ``session`` too)."""
        if session is not None and session.state.opt_state is not None:
            session.state = session.state._replace(opt_state=new)
        self.state = new

    def write_to_nnx_optimizer(self, step: int) -> None:
        """Copy the state (and the step) into the user's ``nnx.Optimizer``, if one was given."""
        opt = self.nnx_optimizer
        if opt is None or self.state is None:
            return
        inner = self.state if self.full_tx is self.tx else self.state[0]
        targets = jax.tree.leaves(opt.opt_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
        values = jax.tree.leaves(inner)
        if len(targets) == len(values):
            for var, value in zip(targets, values, strict=True):
                if isinstance(var, nnx.Variable):
                    var.set_value(value)
        opt.step.set_value(jnp.asarray(step, opt.step.get_value().dtype))


def learning_rate(opt_state: Any) -> float | None:
    """The ``learning_rate`` of an ``inject_hyperparams`` state; None for others."""
    hyper = lrlib.find_hyperparams(opt_state)
    return None if hyper is None else float(hyper["learning_rate"])


def lr_logs(opt_state: Any, scale_logged: bool = False) -> dict[str, float]:
    """The learning rate for the epoch logs, where it means something: ``{"learning_rate":
    ...}`` (Keras 3's key) for an ``inject_hyperparams`` state, the current value of a schedule
    given to it included; ``{"lr_scale": ...}`` when ``scale_logged`` (a callback of the run
    changes the rate) or once the multiplier is not 1; else nothing."""
    lr = learning_rate(opt_state)
    if lr is not None:
        return {"learning_rate": lr}
    scale = lr_scale(opt_state)
    return {"lr_scale": scale} if scale_logged or scale != 1.0 else {}


def lr_scale(opt_state: Any) -> float:
    """The multiplier chained after the optimizer (1.0 when there is none)."""
    node = lrlib.find_lr_scale(opt_state)
    return 1.0 if node is None else float(node.scale)


def with_learning_rate(opt_state: Any, value: float) -> Any:
    """``opt_state`` with the ``inject_hyperparams`` learning rate set to ``value``."""
    return lrlib.replace_learning_rate(opt_state, value)


def with_lr_scale(opt_state: Any, value: float) -> Any:
    """``opt_state`` with the multiplier set to ``value``."""
    if lrlib.find_lr_scale(opt_state) is None:
        raise AttributeError(
            "This optimizer was built with optax.inject_hyperparams; set "
            "trainer.learning_rate instead of trainer.lr_scale."
        )
    return lrlib.replace_lr_scale(opt_state, value)
