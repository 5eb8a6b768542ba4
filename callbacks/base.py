"""The callback hook API (Keras semantics) and the list that dispatches to callbacks."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger("callbacks")

_BATCH_HOOKS = (
    "on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin", "on_test_batch_end",
    "on_predict_batch_begin", "on_predict_batch_end",
)
_HOOKS = (
    "on_train_begin", "on_train_end", "on_train_exception", "on_epoch_begin", "on_epoch_end",
    "on_test_begin", "on_test_end", "on_predict_begin", "on_predict_end", *_BATCH_HOOKS,
)


class Callback:
    """Base class of callbacks: override the hooks you need; each gets ``logs``, a dict of floats.

    ``self.trainer`` and ``self.model`` are set before ``on_train_begin``; ``self.params`` holds
    ``epochs``, ``steps`` and ``verbose``. Set ``self.trainer.stop_training = True`` to stop.

    What a callback asks of the Trainer is declared by the class attributes below (override
    them in a subclass); the Trainer reads nothing else.
    """

    #: The batch hooks take ``logs=None``: the callback reads the running logs with
    #: ``trainer.batch_logs()`` when it needs them, so the Trainer does not fetch them from the
    #: device after every step. False: each batch hook gets that step's logs (a host sync).
    pulls_batch_logs: bool = False
    #: The batch hooks may run after a block of fused steps (one call per step, after the
    #: block, with the model as of the block's end). ``steps_per_execution="auto"`` fuses steps
    #: only while every batch hook of the call allows it. False: hooks see every step as it runs.
    fusable_batch_hooks: bool = False
    #: The callback writes checkpoints: it runs after the other callbacks, so that their state
    #: is saved as of the same step.
    saves_checkpoints: bool = False
    #: ``latest_state()`` returns the callback's newest checkpoint: ``fit(resume=True)`` loads it.
    provides_checkpoints: bool = False
    #: ``fit`` loads ``latest_state()`` whenever it starts, with or without ``resume=True``
    #: (``BackupAndRestore``).
    restores_automatically: bool = False
    #: The callback changes the learning rate: the epoch logs then carry it from the first
    #: epoch (``lr_scale`` for optimizers without ``inject_hyperparams``).
    changes_learning_rate: bool = False

    def __init__(self) -> None:
        self.trainer: Any = None
        self.params: dict[str, Any] = {}

    @property
    def model(self) -> Any:
        return None if self.trainer is None else self.trainer.model

    def set_trainer(self, trainer: Any) -> None:
        self.trainer = trainer

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def overrides(self, hook: str) -> bool:
        """Whether this callback defines ``hook`` (the Trainer skips hooks nobody defines)."""
        return getattr(type(self), hook) is not getattr(Callback, hook)

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None: ...
    def on_train_end(self, logs: dict[str, float] | None = None) -> None: ...
    def on_train_exception(self, error: BaseException) -> None:
        """Called instead of ``on_train_end`` when ``error`` leaves ``fit`` (after
        ``on_train_begin``): finish or abandon work in flight (checkpoint writes); ``fit``
        re-raises ``error`` afterwards."""
    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None: ...
    def on_train_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None: ...
    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None: ...
    def on_test_begin(self, logs: dict[str, float] | None = None) -> None: ...
    def on_test_end(self, logs: dict[str, float] | None = None) -> None: ...
    def on_test_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None: ...
    def on_test_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None: ...
    def on_predict_begin(self, logs: dict[str, float] | None = None) -> None: ...
    def on_predict_end(self, logs: dict[str, float] | None = None) -> None: ...
    def on_predict_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None: ...
    def on_predict_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None: ...

    def say(self, message: str) -> None:
        """Tell the user something: printed when the call is verbose (``params["verbose"]``,
        so ``verbose=0`` is silent), and always logged at INFO on the ``callbacks`` logger."""
        logger.info(message)
        if self.params.get("verbose"):
            print(message)

    def latest_state(self) -> dict[str, Any] | None:
        """The newest checkpoint tree this callback can give (``provides_checkpoints``)."""
        return None

    # Checkpointed callbacks (EarlyStopping's counters, say) save and restore their progress.
    def state_dict(self) -> dict[str, Any]:
        """Progress to save in checkpoints (plain Python values or arrays); empty by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


def _state_names(callbacks: Iterable[Callback]) -> list[tuple[str, Callback]]:
    """``(name, callback)`` pairs: the class name, with ``_1``, ``_2``... for repeats of a class."""
    seen: dict[str, int] = {}
    out = []
    for cb in callbacks:
        base = type(cb).__name__
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.append((base if count == 0 else f"{base}_{count}", cb))
    return out


def callback_states(callbacks: Iterable[Callback]) -> dict[str, dict[str, Any]]:
    """The non-empty ``state_dict()`` of each callback, keyed by class name (see ``_state_names``)."""
    states = {}
    for name, cb in _state_names(callbacks):
        state = cb.state_dict()
        if state:
            states[name] = state
    return states


def load_callback_states(callbacks: Iterable[Callback], states: Mapping[str, Any]) -> None:
    """Give each callback the state saved under its name by ``callback_states`` (if any)."""
    for name, cb in _state_names(callbacks):
        state = states.get(name)
        if state is not None:
            cb.load_state_dict(dict(state))


class ResumableCallback(Callback):
    """A callback whose progress restarts with each ``fit`` unless a checkpoint was loaded into it
    just before (``load_state_dict`` then calls ``keep_loaded_state``)."""

    def __init__(self) -> None:
        super().__init__()
        self._restored = False
        self.reset_state()

    def reset_state(self) -> None:
        """Forget the progress of an earlier run."""

    def keep_loaded_state(self) -> None:
        """Make the next ``on_train_begin`` keep the state just loaded."""
        self._restored = True

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        if self._restored:  # progress came from a checkpoint: keep it
            self._restored = False
            return
        self.reset_state()


class CallbackList:
    """Calls each hook on every callback, in order; skips hooks no callback overrides."""

    def __init__(self, callbacks: Iterable[Callback] = (), trainer: Any = None):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(
                    f"callbacks must be callbacks.Callback instances, got {type(cb).__name__}"
                )
        self._active = {
            hook: [getattr(cb, hook) for cb in self.callbacks if cb.overrides(hook)]
            for hook in _HOOKS
        }
        if trainer is not None:
            self.set_trainer(trainer)

    def set_trainer(self, trainer: Any) -> None:
        for cb in self.callbacks:
            cb.set_trainer(trainer)

    def set_params(self, params: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.set_params(params)

    def overrides(self, hook: str) -> bool:
        """Whether any callback defines ``hook``."""
        return bool(self._active[hook])

    def needs_batch_logs(self, mode: str = "train") -> bool:
        """Whether any callback defines a batch hook of ``mode`` ('train', 'test', 'predict')."""
        return self.overrides(f"on_{mode}_batch_begin") or self.overrides(f"on_{mode}_batch_end")

    def call(self, hook: str, *args: Any) -> None:
        for fn in self._active[hook]:
            fn(*args)

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)


def _make_dispatcher(hook: str):
    def dispatch(self: CallbackList, *args: Any) -> None:
        for fn in self._active[hook]:
            fn(*args)

    dispatch.__name__ = hook
    return dispatch


for _hook in _HOOKS:
    setattr(CallbackList, _hook, _make_dispatcher(_hook))
