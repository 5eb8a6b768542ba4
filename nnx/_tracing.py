"""Which JAX trace an object was created under, to reject mutations from another trace."""

from __future__ import annotations

from typing import Any

from jax._src import core as _core


def current_trace() -> Any:
    """An opaque token for the JAX trace active now; equal tokens mean the same trace, and the
    same trace always gives the identical token (so ``is`` is an exact, fast comparison)."""
    return _core.trace_state.value  # a weak reference to the current jax trace


class TraceContextError(RuntimeError):
    """Raised when an object created under one JAX trace is mutated under another."""


class CapturedNodeError(TraceContextError, ValueError):
    """A graph node or Variable captured from outside a transform was returned from it or
    attached to its arguments (also a ValueError, as Flax raises for this)."""


def check_same_trace(obj: Any, created_under: Any) -> None:
    """Raise TraceContextError if the active trace differs from ``created_under``."""
    if created_under is not None and created_under != current_trace():
        raise TraceContextError(
            f"Cannot mutate {type(obj).__name__} from a different trace level: it was created "
            "outside the transform that is running now (it was captured by a closure). Pass it "
            "to the nnx transform as an argument instead, so its updates are carried back."
        )
