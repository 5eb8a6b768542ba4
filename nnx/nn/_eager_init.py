"""``initializer(key, shape, dtype)`` outside a trace with few XLA compilations, to the same bits.

Calling a ``jax.nn.initializers`` initializer eagerly compiles one XLA program per primitive
it runs (convert, sqrt, divide, the sampler, multiply...), and the sampler once per shape; a
2-D sampler can take several times as long to compile as a flat one. ``init_value`` computes
the same value with at most one compilation, shared by every parameter of a size bucket:

* ``zeros`` and ``ones``: ``numpy`` on the host, then ``jax.device_put`` (no compilation).
* ``normal``, ``uniform``, ``truncated_normal`` and ``variance_scaling`` (``lecun_normal``,
  ``glorot_uniform``, ``he_normal``...): the jax.random sampler the initializer calls, with
  the same arguments but a flat shape (for small sizes a power-of-two bucket, cut to size),
  then the initializer's scalar arithmetic and its final multiplication on the host.

Why the bits are the same: the threefry2x32 bits of element ``i`` depend only on the key and
``i`` (the flat index is the counter; with ``jax_threefry_partitionable`` also for a longer
array, so the bucket's first ``n`` entries are the ``n`` of a flat draw), the samplers are
element-wise in those bits, and numpy's float32/float64 sqrt, division and multiplication are
correctly rounded like XLA's on CPU (subnormal or non-finite operands fall back). The scalar
arithmetic is NOT compiled into one XLA program with the sampler: XLA rewrites ``x / c`` into
``x * (1 / c)`` there, which changes the last bit of some values.

The fast path is taken only for initializers whose code is jax's own (recognised by the code
object of the closure that jax's constructor returns, whose captured settings are read on
every call, so nothing is cached by identity) and only while the source of those jax
functions is the one mirrored here (``_FINGERPRINTS``); on CPU, for float32/float64 (zeros
and ones: any numeric dtype), a scalar uncommitted threefry key, outside any trace and any
``jax.default_device`` / ``jax.set_mesh`` block. Everything else - user initializers,
``orthogonal``, bfloat16, other backends, traced keys - is the plain call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.nn import initializers as jax_init  # _compute_fans, and the sources fingerprinted

from nnx import _eager
from nnx.variablelib import VariableMetadata

# Sizes up to _BUCKET_MAX are drawn in power-of-two buckets of at least _BUCKET_MIN entries,
# so that the parameters of a small model share one or two sampler compilations; larger ones
# are drawn at their own size (a bucket would double the memory for the draw).
_BUCKET_MIN = 1 << 12
_BUCKET_MAX = 1 << 16
# Above this many entries the draw costs more than its compilation, and the host route would
# hold one more copy of the value: the plain call.
_HOST_MAX = 1 << 24

# sha256 (first 16 hex digits) of the code lines (``_eager.fingerprint``) of each jax function
# mirrored here, from jax 0.10.2; a jax whose source differs uses the plain calls until this
# module has been checked against it and the fingerprints updated.
_FINGERPRINTS = {
    "zeros": "987e6a925a8166fb",
    "ones": "4abbffae45de2df2",
    "uniform": "2b237cef3a9cb92e",
    "normal": "1f3682d1ab45fe39",
    "truncated_normal": "ee5f551321c97f75",
    "variance_scaling": "ec0cf50c663ec6c7",
}
_TRUNCATED_NORMAL_STDDEV = 0.87962566103423978  # jax's stddev of N(0, 1) truncated to (-2, 2)


_recipes: list[tuple[Any, Callable[..., Any]]] | None = None


def _recipe_table() -> list[tuple[Any, Callable[..., Any]]]:
    """``(function or closure code object, recipe)`` for zeros and ones and for the ``init``
    closures of jax's constructors, whose source matches ``_FINGERPRINTS``; built on first
    use."""
    global _recipes
    if _recipes is None:
        made = {
            "zeros": (jax_init.zeros, _zeros),
            "ones": (jax_init.ones, _ones),
            "uniform": (jax_init.uniform().__code__, _uniform),
            "normal": (jax_init.normal().__code__, _normal),
            "truncated_normal": (jax_init.truncated_normal().__code__, _truncated_normal),
            "variance_scaling": (
                jax_init.variance_scaling(1.0, "fan_in", "normal").__code__, _variance_scaling
            ),
        }
        _recipes = [
            (key, recipe) for name, (key, recipe) in made.items()
            if _eager.fingerprint(getattr(jax_init, name)) == _FINGERPRINTS[name]
        ]
    return _recipes


def has_fast_path(initializer: Callable[..., Any]) -> bool:
    """Whether ``init_value`` may compute ``initializer`` without calling it (it is one of
    jax's, possibly wrapped by ``nnx.with_metadata``)."""
    wrapped = getattr(initializer, "_nnx_wrapped", None)
    if wrapped is not None:
        return has_fast_path(wrapped[0])
    return _find_recipe(initializer) is not None


def _find_recipe(initializer: Any) -> Callable[..., Any] | None:
    """The recipe for ``initializer`` itself (by identity) or for the code of the closure it
    is (by identity of the code object: a user function is never taken for jax's)."""
    code = None
    if getattr(initializer, "__closure__", None):
        code = getattr(initializer, "__code__", None)
    for key, recipe in _recipe_table():
        if key is initializer or (code is not None and key is code):
            return recipe
    return None


def init_value(
    initializer: Callable[..., Any], key: Any, shape: Any, dtype: Any, *,
    reshape_to: tuple[int, ...] | None = None,
) -> Any:
    """``initializer(key, shape, dtype)`` (reshaped to ``reshape_to`` when given): the same
    bits, with fewer XLA compilations when it is one of jax's initializers evaluated eagerly
    (see the module docstring). A ``VariableMetadata`` result keeps its metadata.

    Args:
      initializer: called as ``initializer(key, shape, dtype)``.
      key: the random key.
      shape: the shape the initializer is asked for.
      dtype: the value's dtype.
      reshape_to: the shape of the returned value, when it differs from ``shape``.
    """
    value = _fast_value(initializer, key, shape, dtype, reshape_to)
    if value is not None:
        return value
    value = initializer(key, shape, dtype)
    if reshape_to is None:
        return value
    if isinstance(value, VariableMetadata):
        return VariableMetadata(jnp.reshape(value.raw_value, reshape_to), value.metadata)
    return jnp.reshape(value, reshape_to)


def _fast_value(
    initializer: Any, key: Any, shape: Any, dtype: Any, reshape_to: tuple[int, ...] | None
) -> Any:
    """The value computed without calling ``initializer``, or None to call it."""
    wrapped = getattr(initializer, "_nnx_wrapped", None)
    if wrapped is not None:  # nnx.with_metadata(inner, **metadata)
        inner, metadata = wrapped
        value = _fast_value(inner, key, shape, dtype, reshape_to)
        return None if value is None else VariableMetadata(value, dict(metadata))
    recipe = _find_recipe(initializer)
    if recipe is None or not _eager.host_placement_ok():
        return None
    if not isinstance(shape, tuple | list) or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        return None
    shape = tuple(int(d) for d in shape)
    if math.prod(shape) > _HOST_MAX:
        return None
    dt = _eager.canonical_dtype(dtype)
    if dt is None:
        return None
    try:
        with np.errstate(all="ignore"):  # what numpy would warn about is refused by _scaled
            value = recipe(initializer, key, shape, dt)
    except (OverflowError, ValueError, TypeError):  # e.g. a setting too large for the dtype
        return None  # the plain call raises its own error
    if value is None:
        return None
    if reshape_to is not None:
        if math.prod(reshape_to) != value.size:
            return None  # the plain path raises jnp.reshape's error
        value = value.reshape(reshape_to)
    return _eager.to_device(value)


# -- recipes: (initializer, key, shape, dtype) -> numpy value, or None for the plain call --------

_NUMERIC = {np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
    np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128,
)} | {np.dtype(jax.numpy.bfloat16)}


def _zeros(initializer: Any, key: Any, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    return np.zeros(shape, dtype) if dtype in _NUMERIC else None


def _ones(initializer: Any, key: Any, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    return np.ones(shape, dtype) if dtype in _NUMERIC else None


def _settings(initializer: Any) -> dict[str, Any]:
    """The values an initializer closure captured, by name (read on every call)."""
    cells = initializer.__closure__ or ()
    names = initializer.__code__.co_freevars
    return dict(zip(names, (c.cell_contents for c in cells), strict=True))


def _is_real_number(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def _host_draw_ok(key: Any, dtype: np.dtype) -> bool:
    """Whether a draw with ``key`` can be scaled on the host: the dtype's arithmetic is
    numpy's, and the key is a concrete, scalar, uncommitted threefry key."""
    return (
        _eager.host_arithmetic_ok(dtype)
        and _eager.concrete_array(key)
        and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        and key.shape == ()
        and str(jax.random.key_impl(key)) == "threefry2x32"
        and not key.committed
    )


def _draw(sampler: Callable[..., jax.Array], key: Any, shape: tuple[int, ...],
          dtype: np.dtype, *args: Any) -> np.ndarray:
    """``sampler(key, *args with the shape)`` of ``shape``'s size drawn flat (in a bucket when
    the bits are counter-based), on the host."""
    n = math.prod(shape)
    size = n
    if jax.config.jax_threefry_partitionable and n <= _BUCKET_MAX:
        size = max(_BUCKET_MIN, 1 << (n - 1).bit_length())
    flat = sampler(key, (size,), dtype, *args)
    return np.asarray(flat)[:n]


def _scaled(sample: np.ndarray, scale: np.ndarray, shape: tuple[int, ...],
            dtype: np.dtype, *scalars: np.ndarray) -> np.ndarray | None:
    """``sample * scale`` reshaped, when numpy's product is XLA's (else None)."""
    value = sample * scale
    if value.dtype != dtype or not _eager.finite_and_normal(sample, scale, value, *scalars):
        return None
    return value.reshape(shape)


def _uniform_sampler(key: Any, shape: tuple, dtype: np.dtype, *args: Any) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, *args)


def _normal_sampler(key: Any, shape: tuple, dtype: np.dtype) -> jax.Array:
    return jax.random.normal(key, shape, dtype)


def _truncated_normal_sampler(key: Any, shape: tuple, dtype: np.dtype, lower: Any,
                              upper: Any) -> jax.Array:
    return jax.random.truncated_normal(key, lower, upper, shape, dtype)


def _uniform(initializer: Any, key: Any, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    # jax: random.uniform(key, shape, dtype) * jnp.array(scale, dtype)
    scale = _settings(initializer).get("scale")
    if not (_is_real_number(scale) and _host_draw_ok(key, dtype)):
        return None
    sample = _draw(_uniform_sampler, key, shape, dtype)
    return _scaled(sample, np.array(scale, dtype), shape, dtype)


def _normal(initializer: Any, key: Any, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    # jax: random.normal(key, shape, dtype) * jnp.array(stddev, dtype)
    stddev = _settings(initializer).get("stddev")
    if not (_is_real_number(stddev) and _host_draw_ok(key, dtype)):
        return None
    sample = _draw(_normal_sampler, key, shape, dtype)
    return _scaled(sample, np.array(stddev, dtype), shape, dtype)


def _truncated_normal(initializer: Any, key: Any, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    # jax: random.truncated_normal(key, lower, upper, shape, dtype) * jnp.array(stddev, dtype)
    s = _settings(initializer)
    stddev, lower, upper = s.get("stddev"), s.get("lower"), s.get("upper")
    if not (all(_is_real_number(x) for x in (stddev, lower, upper)) and _host_draw_ok(key, dtype)):
        return None
    sample = _draw(_truncated_normal_sampler, key, shape, dtype, lower, upper)
    return _scaled(sample, np.array(stddev, dtype), shape, dtype)


def _variance_scaling(initializer: Any, key: Any, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    s = _settings(initializer)
    scale, mode, distribution = s.get("scale"), s.get("mode"), s.get("distribution")
    if not (
        _is_real_number(scale)
        and distribution in ("truncated_normal", "normal", "uniform")
        and _host_draw_ok(key, dtype)
    ):
        return None
    try:  # jax's own fan computation; its errors come from the plain call
        fan_in, fan_out = jax_init._compute_fans(
            shape, s["in_axis"], s["out_axis"], s["batch_axis"]
        )
        denominator = {
            "fan_in": lambda: fan_in,
            "fan_out": lambda: fan_out,
            "fan_avg": lambda: (fan_in + fan_out) / 2,
            "fan_geo_avg": lambda: (fan_in * fan_out) ** 0.5,
        }[mode]()
        variance = np.array(scale / denominator, dtype)
    except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError, OverflowError):
        return None
    if distribution == "truncated_normal":
        stddev = np.sqrt(variance) / np.array(_TRUNCATED_NORMAL_STDDEV, dtype)
        sample = _draw(_truncated_normal_sampler, key, shape, dtype, -2, 2)
    elif distribution == "normal":
        stddev = np.sqrt(variance)
        sample = _draw(_normal_sampler, key, shape, dtype)
    else:
        stddev = np.sqrt(3 * variance)
        sample = _draw(_uniform_sampler, key, shape, dtype, -1)
    return _scaled(sample, stddev, shape, dtype, variance)
