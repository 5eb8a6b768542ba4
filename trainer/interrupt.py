"""Ctrl-C during a Trainer call: the first SIGINT asks the loop to stop after the current step."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

logger = logging.getLogger("trainer")


@contextlib.contextmanager
def stop_on_interrupt(request_stop: Callable[[], None], message: Callable[[], str]) -> Iterator[None]:
    """Turn the first SIGINT into ``request_stop()``; a second one interrupts at once.

    Only in the main thread, and only where SIGINT has Python's default handler (a handler the
    user installed, or an ignored SIGINT, stays as it is). ``message()`` is logged (a warning of
    the ``trainer`` logger) when the call was stopped this way.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield
        return
    hit = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal hit
        hit = True
        request_stop()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if hit:
            logger.warning(message())


def interrupt_progress(progress: Any, reset: bool = True) -> Any:
    """``stop_on_interrupt`` for a Trainer call: Ctrl-C sets ``progress.interrupted`` and
    requests the stop (``stop_reason`` ``"interrupted"``); ``reset`` clears an earlier flag."""
    if reset:
        progress.interrupted = False

    def stop() -> None:
        progress.interrupted = progress.stop = True
        progress.stop_reason = "interrupted"

    return stop_on_interrupt(stop, lambda: (
        f"Trainer: interrupted; stopped after step {progress.step} (epoch {progress.epoch}). "
        "The model holds the last completed step."
    ))
