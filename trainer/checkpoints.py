"""The Trainer's checkpoints: its state as a checkpoint tree and back (``checkpointing`` checks
and stores them), for ``Trainer.checkpoint_state`` / ``load_checkpoint_state`` / ``save`` /
``restore``, ``ModelCheckpoint`` and ``BackupAndRestore``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

import checkpointing
import nnx
from callbacks.base import callback_states, load_callback_states
from trainer import model_state
from trainer.data import IterData
from trainer.loop import Progress
from trainer.optimizer import OptimizerState
from trainer.session import Session


class Checkpoints:
    """Collects and applies the checkpoint trees of one Trainer.

    Args:
      model: the user's model.
      optimizer: the Trainer's optimizer state holder.
      progress: the Trainer's counters and shuffle key.
      opt_state: returns the live optax state (initializing it on first use).
      live: returns the call in progress: its session (None outside calls), its callbacks, and
        the training source of a ``fit`` (None otherwise).
      donate: training sessions hold donated copies of the model's arrays.
      setup: the Trainer's ``StepSetup``: the scalar logs a custom step adds are saved with the
        running metrics, and learned on load so that the metrics' layout fits.
    """

    def __init__(
        self, model: Any, optimizer: OptimizerState, progress: Progress, *,
        opt_state: Callable[[], Any], live: Callable[[], tuple[Session | None, list[Any], Any]],
        donate: Callable[[], bool], setup: Any = None, placement: Any = None,
    ):
        self.model, self.optimizer, self.progress = model, optimizer, progress
        self._opt_state, self._live, self._donate = opt_state, live, donate
        self.setup, self.placement = setup, placement

    def collect(self) -> dict[str, Any]:
        p = self.progress
        session, callbacks, data = self._live()
        if session is not None:
            session.sync()
        epoch, batch = (p.epoch + 1, 0) if p.epoch_complete else (p.epoch, p.batch)
        metrics = session.state.metrics if session is not None and not p.epoch_complete else None
        position = None
        # a re-iterable source starts a new iterator after a complete epoch: no position to keep
        if isinstance(data, IterData) and (data.one_shot or not p.epoch_complete):
            position = data.position_state()
        tree = checkpointing.collect(
            model=self.model, opt_state=self._opt_state(), step=p.step, epoch=epoch, batch=batch,
            rng_key=p.shuffle_key, callbacks=callback_states(callbacks), metrics=metrics,
            data_position=position,
        )
        if metrics is not None and self.setup is not None and self.setup.step_keys:
            # the running means of a custom step's logs: a fresh Trainer learns them on load
            tree["step_keys"] = list(self.setup.step_keys)
        return tree

    def load(self, tree: Mapping[str, Any]) -> None:
        session, callbacks, data = self._live()
        keys = tuple(tree.get("step_keys") or ())
        if keys and self.setup is not None and not set(keys) <= set(self.setup.step_keys):
            self.setup.learn_step_keys(keys)  # the saved running metrics have rows for them
            if session is not None:
                session.state = session.state._replace(metrics=self.setup.fresh_metrics())
        metrics = session.state.metrics if session is not None else None
        got = checkpointing.read(tree, model=self.model, opt_state=self._opt_state(), metrics=metrics)
        if got.data is not None and isinstance(data, IterData):
            _check_position(data, got.data)  # before anything changes
        for var, value in got.model_values:
            var.set_value(value)
        p = self.progress
        p.step = p.step if got.step is None else got.step
        p.epoch = p.epoch if got.epoch is None else got.epoch
        p.batch, p.epoch_complete = got.batch, False
        if got.rng is not None:
            impl = jax.random.key_impl(p.shuffle_key)
            p.shuffle_key = jax.random.wrap_key_data(jnp.asarray(got.rng, jnp.uint32), impl=impl)
        if got.callbacks is not None:
            load_callback_states(callbacks, got.callbacks)
        if got.data is not None and isinstance(data, IterData):
            data.restore_position(got.data)
        self.optimizer.state = got.opt_state
        if session is None:
            self.optimizer.write_to_nnx_optimizer(p.step)
            return
        session.reload(copy=self._donate() and session.training)
        state = session.state
        session.state = state._replace(
            opt_state=got.opt_state if state.opt_state is not None else None,
            metrics=got.metrics if got.metrics is not None else state.metrics,
            counters=model_state.new_counters(p.step, p.batch),
        )

    def resume(self, callbacks: Any, resume: bool) -> None:
        """Load a backup (``restores_automatically`` callbacks, always) or, with ``resume``,
        the latest checkpoint of the first callback that ``provides_checkpoints``."""
        automatic = [cb for cb in callbacks if cb.restores_automatically]
        for cb in automatic:
            tree = cb.latest_state()
            if tree is not None:
                self.load(tree)
                return
        if not resume:
            return
        for cb in callbacks:
            if cb.provides_checkpoints and not cb.restores_automatically:
                tree = cb.latest_state()  # says so in one line when there is none
                if tree is not None:
                    self.load(tree)
                return
        if not automatic:
            raise ValueError(
                "fit(resume=True) needs a checkpointing callback with latest_state() (such as "
                "callbacks.ModelCheckpoint or callbacks.BackupAndRestore) in callbacks=."
            )

    def shardings(self) -> Any:
        """Where each array of a checkpoint tree goes when read (see ``Trainer.checkpoint_shardings``)."""
        placement = self.placement
        if placement is None or placement.mesh is None:
            return None
        by_path = {}
        for path, var in nnx.state(self.model, checkpointing.CHECKPOINTED).flat_state():
            shape = tuple(jnp.shape(var.get_value()))
            by_path[("model", *map(str, path))] = (placement.variable_sharding(var), shape)
        for i, leaf in enumerate(jax.tree.leaves(self._opt_state())):
            target = leaf.sharding if placement.on_mesh(leaf) else placement.replicated
            by_path[("optimizer", str(i))] = (target, tuple(jnp.shape(leaf)))

        def sharding(path: tuple[str, ...], shape: tuple[int, ...]) -> Any:
            found = by_path.get(path)
            if found is not None and found[1] == shape:
                return found[0]
            return placement.replicated

        return sharding

    def save(self, directory: str | os.PathLike) -> int:
        store = checkpointing.CheckpointStore(directory, max_to_keep=1, owner="Trainer.save")
        try:
            store.save(int(self.progress.step), self.collect())
        finally:
            store.close()
        return int(self.progress.step)

    def restore(self, directory: str | os.PathLike, step: int | None = None) -> int:
        store = checkpointing.CheckpointStore(directory, owner="Trainer.restore")
        try:
            found = store.load(step, shardings=self.shardings())
        finally:
            store.close()
        if found is None:
            raise FileNotFoundError(f"Trainer.restore: no checkpoint in {store.directory}.")
        tree = found[1]
        self.load({k: tree[k] for k in ("model", "optimizer", "step")})
        return int(tree["step"])


def _current_position(data: IterData) -> Any:
    """The state of the source's iterator as it is now (one-shot) or as a new one starts; None
    when its iterators keep none."""
    state = data.position_state()
    if state is None and not data.one_shot:
        it = iter(data.source)
        if callable(getattr(it, "get_state", None)) and callable(getattr(it, "set_state", None)):
            state = it.get_state()
    return state


def _decoded(state: Any) -> Any:
    if isinstance(state, bytes | bytearray):  # grain's DataLoader: JSON in bytes
        try:
            return json.loads(state)
        except ValueError:
            return state
    return state


def _check_position(data: IterData, saved: Any) -> None:
    """A ValueError when the checkpoint's data-iterator state cannot be the state of this
    source's iterators (another kind, or other keys): it would fail deep inside ``fit``."""
    current = _current_position(data)
    if current is None:
        return
    have, want = _decoded(saved), _decoded(current)
    problem = None
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            problem = f"it is a {type(have).__name__}; this source's iterators keep a dict"
        elif set(have) != set(want):
            missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
            problem = f"it lacks {missing}" if missing else ""
            problem += (" and " if missing and extra else "") + (f"has unknown keys {extra}" if extra else "")
    elif isinstance(want, bytes | bytearray) and not isinstance(have, bytes | bytearray):
        problem = f"it is a {type(have).__name__}; this source's iterators keep bytes"
    if problem:
        raise ValueError(
            "load_checkpoint_state: the checkpoint's data-iterator state does not fit this data "
            f"source ({problem}): was it saved with another dataset or pipeline? Resume with the "
            "pipeline of the run that saved it."
        )
