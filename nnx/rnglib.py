"""Random-number streams whose keys and counters are Variables, so they move with the State."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnx.graph import iter_graph
from nnx.object import Object
from nnx.variablelib import RngCount, RngKey

_SAMPLERS = (
    "normal", "uniform", "bernoulli", "randint", "categorical", "permutation",
    "truncated_normal", "choice", "gumbel", "exponential", "laplace", "bits",
)


def _as_key(seed: Any) -> jax.Array:
    if isinstance(seed, int | np.integer):
        return jax.random.key(int(seed))
    if isinstance(seed, jax.Array | np.ndarray):
        if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            return seed
        if seed.dtype == jnp.uint32 and seed.ndim >= 1 and seed.shape[-1] == 2:
            return jax.random.wrap_key_data(seed)
        if jnp.issubdtype(seed.dtype, jnp.integer) and seed.ndim == 0:
            return jax.random.key(seed)
    raise TypeError(
        f"An RNG stream needs an int seed or a JAX key, got {type(seed).__name__} "
        f"{getattr(seed, 'dtype', '')}"
    )


class RngStream(Object):
    """One named stream: each call returns ``fold_in(key, count)`` and increments ``count``.

    Args:
      key: an int seed or a JAX key (typed or raw ``uint32[2]``), possibly batched.
      tag: the stream's name; its Variables carry it as ``tag`` metadata.
    """

    def __init__(self, key: Any, *, tag: str):
        key = _as_key(key)
        self.key = RngKey(key, tag=tag)
        self.count = RngCount(jnp.zeros(key.shape, dtype=jnp.uint32), tag=tag)
        self.tag = tag

    def __call__(self) -> jax.Array:
        key = jax.random.fold_in(self.key.value, self.count.value)
        self.count.value = self.count.value + 1
        return key

    def fork(self, *, split: int | tuple[int, ...] | None = None) -> RngStream:
        """A new independent stream seeded from this one (with ``split`` leading key axes)."""
        key = self()
        if split is not None:
            key = jax.random.split(key, split)
        return RngStream(key, tag=self.tag)

    def split(self, k: int | tuple[int, ...]) -> RngStream:
        """A new stream whose key has leading axis (or axes) ``k``, for vmap or scan."""
        return self.fork(split=k)


def _make_sampler(name: str):
    fn = getattr(jax.random, name)

    def sampler(self: Any, *args: Any, **kwargs: Any) -> jax.Array:
        stream = self if isinstance(self, RngStream) else self.default
        return fn(stream(), *args, **kwargs)

    sampler.__name__ = name
    sampler.__doc__ = f"``jax.random.{name}`` with a fresh key from this stream."
    return sampler


for _name in _SAMPLERS:
    setattr(RngStream, _name, _make_sampler(_name))


class Rngs(Object):
    """A set of named random streams: ``Rngs(0)``, ``Rngs(params=0, dropout=1)``.

    ``rngs.params()`` or ``rngs['params']()`` returns a new key from stream ``params``; a name
    without a stream falls back to ``default``; ``rngs()`` uses ``default``.

    Args:
      default: seed or key of the ``default`` stream (optional).
      **streams: seeds or keys of named streams.
    """

    def __init__(self, default: Any = None, /, **streams: Any):
        if default is not None:
            streams = {"default": default, **streams}
        for name, value in streams.items():
            stream = value if isinstance(value, RngStream) else RngStream(value, tag=name)
            setattr(self, name, stream)

    def _streams(self) -> dict[str, RngStream]:
        return {k: v for k, v in dict.items(vars(self)) if isinstance(v, RngStream)}

    def _get(self, name: str, error: type[Exception]) -> RngStream:
        d = vars(self)
        if name in d:
            return d[name]
        if "default" in d:
            return d["default"]
        raise error(
            f"No RNG stream named {name!r} and no 'default' stream to fall back to; "
            f"this Rngs has {sorted(self._streams()) or 'no streams'}. "
            f"Create it with nnx.Rngs({name}=seed) or nnx.Rngs(seed) for a default stream."
        )

    def __getattr__(self, name: str) -> RngStream:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._get(name, AttributeError)

    def __getitem__(self, name: str) -> RngStream:
        return self._get(name, KeyError)

    def __call__(self) -> jax.Array:
        return self._get("default", AttributeError)()

    def __contains__(self, name: object) -> bool:
        return name in self._streams()

    def __iter__(self) -> Iterator[str]:
        return iter(self._streams())

    def __len__(self) -> int:
        return len(self._streams())

    def items(self) -> Iterator[tuple[str, RngStream]]:
        return iter(self._streams().items())

    def fork(self, *, split: int | tuple[int, ...] | None = None) -> Rngs:
        """New independent streams seeded from these (keys with leading ``split`` axes)."""
        return Rngs(**{name: s.fork(split=split) for name, s in self._streams().items()})

    def split(self, k: int | tuple[int, ...]) -> Rngs:
        """New streams whose keys have leading axis ``k``, for vmap or scan over layers."""
        return self.fork(split=k)


for _name in _SAMPLERS:
    setattr(Rngs, _name, _make_sampler(_name))


def reseed(node: Any, **stream_keys: Any) -> None:
    """Reset the key (and zero the count) of every stream named in ``stream_keys`` in ``node``."""
    for _, value in iter_graph(node):
        if isinstance(value, RngStream) and value.tag in stream_keys:
            key = _as_key(stream_keys[value.tag])
            value.key.value = key
            value.count.value = jnp.zeros(key.shape, dtype=jnp.uint32)
