"""``Dropout``: zero random entries in training mode, identity in evaluation mode."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nnx.module import Module
from nnx.rnglib import Rngs, RngStream


def _key_from(rngs: Rngs | RngStream | jax.Array, collection: str) -> jax.Array:
    if isinstance(rngs, Rngs):
        return rngs[collection]()
    if isinstance(rngs, RngStream):
        return rngs()
    if isinstance(rngs, jax.Array):
        return rngs
    raise TypeError(
        f"Dropout: rngs must be an nnx.Rngs, an nnx.RngStream or a JAX key, got "
        f"{type(rngs).__name__}"
    )


class Dropout(Module):
    """Randomly zero a fraction ``rate`` of the inputs and scale the rest by ``1 / (1 - rate)``.

    The layer keeps its own stream, forked at construction from ``rngs[rng_collection]`` (which
    falls back to the ``default`` stream), so each call draws a new mask. ``model.eval()`` sets
    ``deterministic=True`` (identity) and ``model.train()`` sets it back to False.

    Args:
      rate: probability of zeroing an entry (0 is the identity, 1 gives zeros).
      broadcast_dims: axes along which the mask is shared (e.g. ``(1,)`` for whole time steps).
      deterministic: identity when True (evaluation mode).
      rng_collection: the stream name to draw keys from.
      rngs: streams to fork this layer's stream from; may instead be given to each call.
    """

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool = False,
        rng_collection: str = "dropout",
        rngs: Rngs | RngStream | None = None,
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1], got {rate}")
        self.rate = rate
        self.broadcast_dims = tuple(broadcast_dims)
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        if isinstance(rngs, Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif isinstance(rngs, RngStream):
            self.rngs = rngs.fork()
        elif rngs is None:
            self.rngs = None
        else:
            raise TypeError(
                f"Dropout: rngs must be an nnx.Rngs, an nnx.RngStream or None, got "
                f"{type(rngs).__name__}"
            )

    def __call__(
        self,
        inputs: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: Rngs | RngStream | jax.Array | None = None,
    ) -> jax.Array:
        """Apply dropout to ``inputs``.

        Args:
          inputs: any array.
          deterministic: overrides the attribute for this call (True: identity).
          rngs: streams or a key to use for this call instead of the layer's own stream.
        """
        if deterministic is None:
            deterministic = self.deterministic
        if deterministic or self.rate == 0.0:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        if rngs is not None:
            key = _key_from(rngs, self.rng_collection)
        elif self.rngs is not None:
            key = self.rngs()
        else:
            raise ValueError(
                "`deterministic` is False, but no `rngs` argument was provided to Dropout, and "
                "it keeps no stream of its own: pass rngs=nnx.Rngs(dropout=0) to the "
                "constructor or to the call, or set deterministic=True (model.eval())."
            )
        shape = list(jnp.shape(inputs))
        for d in self.broadcast_dims:
            shape[d] = 1
        return _apply_mask(key, inputs, 1.0 - self.rate, tuple(shape))

    def set_view(self, deterministic: bool | None = None) -> None:
        """The hook ``nnx.view`` calls: set ``deterministic`` when given."""
        if deterministic is not None:
            self.deterministic = deterministic


@functools.partial(jax.jit, static_argnames=("mask_shape",))
def _apply_mask(key: jax.Array, inputs: jax.Array, keep: float, mask_shape: tuple) -> jax.Array:
    """Keep each entry with probability ``keep`` (shared along axes of size 1 in
    ``mask_shape``) and scale the kept ones by ``1 / keep``.

    The mask is drawn with the inputs' sharding (none along the shared axes), so that sharded
    inputs under an explicit mesh stay sharded.
    """
    sharding = jax.typeof(inputs).sharding
    spec = [
        None if n == 1 and n != size else axes
        for n, size, axes in zip(mask_shape, inputs.shape, _padded_spec(sharding.spec, inputs.ndim),
                                 strict=True)
    ]
    mask = jax.random.bernoulli(
        key, p=keep, shape=mask_shape, out_sharding=NamedSharding(sharding.mesh, P(*spec))
    )
    mask = jnp.broadcast_to(mask, jnp.shape(inputs), out_sharding=sharding)
    return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


def _padded_spec(spec: P, ndim: int) -> tuple:
    """``spec``'s entries, one per dimension (a short spec leaves the last ones unsharded)."""
    return (*spec, *(None,) * (ndim - len(spec)))
