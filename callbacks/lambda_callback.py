"""LambdaCallback: a callback made of plain functions, one per hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from callbacks.base import _HOOKS, Callback


class LambdaCallback(Callback):
    """Calls the given functions at their hooks; hooks not given are not defined at all.

    Epoch hooks receive ``(epoch, logs)``, batch hooks ``(batch, logs)``, the others ``(logs)``.
    Only the hooks given count as overridden, so a LambdaCallback without batch functions adds
    no host sync per batch.

    Args:
      on_epoch_begin, on_epoch_end, on_train_begin, on_train_end, on_train_batch_begin,
      on_train_batch_end, on_test_begin, on_test_end, on_test_batch_begin, on_test_batch_end,
      on_predict_begin, on_predict_end, on_predict_batch_begin, on_predict_batch_end:
        a function for that hook, or None.

    Example::

      losses = []
      record = LambdaCallback(on_epoch_end=lambda epoch, logs: losses.append(logs["loss"]))
    """

    def __init__(
        self,
        on_epoch_begin: Callable[..., Any] | None = None,
        on_epoch_end: Callable[..., Any] | None = None,
        on_train_begin: Callable[..., Any] | None = None,
        on_train_end: Callable[..., Any] | None = None,
        on_train_batch_begin: Callable[..., Any] | None = None,
        on_train_batch_end: Callable[..., Any] | None = None,
        on_test_begin: Callable[..., Any] | None = None,
        on_test_end: Callable[..., Any] | None = None,
        on_test_batch_begin: Callable[..., Any] | None = None,
        on_test_batch_end: Callable[..., Any] | None = None,
        on_predict_begin: Callable[..., Any] | None = None,
        on_predict_end: Callable[..., Any] | None = None,
        on_predict_batch_begin: Callable[..., Any] | None = None,
        on_predict_batch_end: Callable[..., Any] | None = None,
        on_train_exception: Callable[..., Any] | None = None,
    ):
        super().__init__()
        given = locals()
        self._functions: dict[str, Callable[..., Any]] = {}
        for hook in _HOOKS:
            fn = given[hook]
            if fn is None:
                continue
            if not callable(fn):
                raise TypeError(
                    f"LambdaCallback: {hook} must be a callable or None, got {type(fn).__name__}"
                )
            self._functions[hook] = fn

    def overrides(self, hook: str) -> bool:
        """Whether a function was given for ``hook``."""
        return hook in self._functions

    def _call(self, hook: str, *args: Any) -> None:
        fn = self._functions.get(hook)
        if fn is not None:
            fn(*args)

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._call("on_train_begin", logs)

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        self._call("on_train_end", logs)

    def on_train_exception(self, error: BaseException) -> None:
        self._call("on_train_exception", error)

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._call("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._call("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._call("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._call("on_train_batch_end", batch, logs)

    def on_test_begin(self, logs: dict[str, float] | None = None) -> None:
        self._call("on_test_begin", logs)

    def on_test_end(self, logs: dict[str, float] | None = None) -> None:
        self._call("on_test_end", logs)

    def on_test_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._call("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._call("on_test_batch_end", batch, logs)

    def on_predict_begin(self, logs: dict[str, float] | None = None) -> None:
        self._call("on_predict_begin", logs)

    def on_predict_end(self, logs: dict[str, float] | None = None) -> None:
        self._call("on_predict_end", logs)

    def on_predict_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._call("on_predict_batch_begin", batch, logs)

    def on_predict_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._call("on_predict_batch_end", batch, logs)
