"""When a value that eager JAX ops would compute can be made on the host instead (numpy, then
``jax.device_put``) with the same bits, dtype and placement: outside any trace, with nothing in
JAX's configuration that places or checks eager results differently.

An eager op costs one XLA compilation per primitive and shape the first time it runs; the host
route costs none. Knows no nnx type.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax._src import core as _core

# dtypes whose arithmetic numpy does exactly as XLA's CPU backend: IEEE binary32/binary64 with
# correctly rounded +, -, *, / and sqrt (XLA flushes subnormals to zero, which
# ``finite_and_normal`` rules out)
_IEEE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def outside_trace() -> bool:
    """Whether no JAX trace is active (no jit, vmap, grad, eval_shape...): eager evaluation."""
    return _core.trace_state_clean()


def host_placement_ok() -> bool:
    """Whether ``jax.device_put(numpy_array)`` puts an array where an eager op would put its
    result (uncommitted, on the default device) and nothing forbids the transfer: outside a
    trace, no ``jax.default_device``, no mesh set with ``jax.set_mesh``, transfer guards
    allowing, no NaN/Inf checking (which eager ops do and the host does not)."""
    config = jax.config
    return (
        outside_trace()
        and config.jax_default_device is None
        and jax.sharding.get_abstract_mesh().empty
        and config.jax_transfer_guard in (None, "allow")
        and config.jax_transfer_guard_host_to_device in (None, "allow")
        and config.jax_transfer_guard_device_to_host in (None, "allow")
        and not config.jax_debug_nans
        and not config.jax_debug_infs
    )


def canonical_dtype(dtype: Any) -> np.dtype | None:
    """``dtype`` as a numpy dtype when JAX keeps it as it is (float64 without x64 does not:
    eager ops would give float32 and warn); None otherwise."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
        return dt if jax.dtypes.canonicalize_dtype(dt) == dt else None
    except TypeError:
        return None


def host_arithmetic_ok(dtype: np.dtype) -> bool:
    """Whether numpy computes ``+ - * /`` and ``sqrt`` in ``dtype`` to the bits of the eager
    ops: float32/float64 on the CPU backend (for normal, finite operands and results)."""
    return dtype in _IEEE_DTYPES and jax.default_backend() == "cpu"


def finite_and_normal(*arrays: np.ndarray) -> bool:
    """Whether every entry is finite and zero or normal: no subnormal (which XLA's CPU
    backend flushes to zero and numpy keeps), no NaN (whose payload may differ)."""
    for a in arrays:
        a = np.asarray(a)
        if not np.isfinite(a).all():
            return False
        tiny = np.finfo(a.dtype).tiny
        magnitude = np.abs(a)
        if ((magnitude < tiny) & (magnitude != 0)).any():
            return False
    return True


def concrete_array(x: Any) -> bool:
    """Whether ``x`` is a concrete (not traced), not deleted ``jax.Array``."""
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and not x.is_deleted()


def to_device(value: np.ndarray) -> jax.Array:
    """``value`` on the default device, uncommitted, as an eager op's result would be."""
    return jax.device_put(value)


def fingerprint(fn: Callable[..., Any]) -> str | None:
    """A hash of ``fn``'s source, to notice when jax's code changed: its lines without
    docstrings, comment lines, blank lines and indentation; None when the source is
    unavailable."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    lines = source.splitlines()
    docstring_lines = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            docstring_lines.update(range(body[0].lineno - 1, body[0].end_lineno))
    code = [
        line.strip() for i, line in enumerate(lines)
        if i not in docstring_lines and line.strip() and not line.strip().startswith("#")
    ]
    return hashlib.sha256("\n".join(code).encode()).hexdigest()[:16]


# -- fold_in of a threefry key, on the host ---------------------------------------------------

# Fingerprints of the jax 0.10.2 functions that define fold_in for threefry2x32 keys, which
# ``fold_in_on_host`` mirrors: fold_in(key, d) = threefry2x32(key, (0, d)).
_FOLD_IN_FINGERPRINTS = {
    "threefry_fold_in": "0c71b6ba9d91a831",
    "_threefry_fold_in": "92ae415e7df6faf4",
    "threefry_2x32": "f3107662d73ad584",
    "_threefry_seed": "743459786198dddc",
    "_threefry2x32_lowering": "adcf4db4b9096b68",
    "apply_round": "3b4bafe2b807a7ff",
    "rolled_loop_step": "1defe2ec4a09cf29",
}
_fold_in_checked: bool | None = None
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _fold_in_mirrors_jax() -> bool:
    """Whether jax's threefry fold_in is the code ``fold_in_on_host`` mirrors (checked once)."""
    global _fold_in_checked
    if _fold_in_checked is None:
        try:
            from jax._src.random import threefry2x32 as tf

            _fold_in_checked = tf.threefry_prng_impl.fold_in is tf.threefry_fold_in and all(
                fingerprint(getattr(tf, name)) == expected
                for name, expected in _FOLD_IN_FINGERPRINTS.items()
            )
        except (ImportError, AttributeError):
            _fold_in_checked = False
    return _fold_in_checked


def _threefry2x32(k1: int, k2: int, x1: int, x2: int) -> tuple[int, int]:
    """The Threefry-2x32 hash (20 rounds) of one block, in Python integers mod 2**32."""
    mask = 0xFFFFFFFF
    ks = (k1, k2, k1 ^ k2 ^ 0x1BD11BDA)
    x = [(x1 + ks[0]) & mask, (x2 + ks[1]) & mask]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x[0] = (x[0] + x[1]) & mask
            x[1] = ((x[1] << r) | (x[1] >> (32 - r))) & mask
            x[1] = x[0] ^ x[1]
        x[0] = (x[0] + ks[(i + 1) % 3]) & mask
        x[1] = (x[1] + ks[(i + 2) % 3] + i + 1) & mask
    return x[0], x[1]


def fold_in_on_host(key: Any, count: Any) -> tuple[jax.Array, jax.Array] | None:
    """``(jax.random.fold_in(key, count), count + 1)`` computed on the host (integer
    arithmetic, the same bits) for a scalar threefry key and uint32 count on the CPU backend,
    uncommitted, outside a trace; None otherwise."""
    if not (
        host_placement_ok()
        and concrete_array(key) and concrete_array(count)
        and key.shape == () and count.shape == () and count.dtype == np.uint32
        and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        and str(jax.random.key_impl(key)) == "threefry2x32"
        and not key.committed and not count.committed
        and jax.default_backend() == "cpu"
        and _fold_in_mirrors_jax()
    ):
        return None
    k1, k2 = (int(v) for v in np.asarray(jax.random.key_data(key)))
    c = int(np.asarray(count))
    new = np.array(_threefry2x32(k1, k2, 0, c), np.uint32)
    new_key = jax.random.wrap_key_data(new, impl="threefry2x32")
    return new_key, to_device(np.uint32((c + 1) & 0xFFFFFFFF))
