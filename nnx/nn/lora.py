"""Low-rank adapters: ``LoRA`` (``x @ lora_a @ lora_b`` beside an optional base module) and
``LoRALinear`` (a ``Linear`` with a built-in adapter)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from nnx.module import Module
from nnx.nn import dtypes, initializers
from nnx.nn._params import NO_METADATA, create_param
from nnx.nn.dtypes import check_last_axis
from nnx.nn.linear import Linear
from nnx.rnglib import Rngs
from nnx.variablelib import LoRAParam, Variable

default_a_initializer = initializers.he_uniform()
default_b_initializer = initializers.zeros


class LoRA(Module):
    """A low-rank update ``x @ lora_a @ lora_b``, added to ``base_module(x)`` when given.

    ``lora_b`` starts at zero, so at initialization the output equals the base module's.

    Args:
      in_features: size of the last input axis.
      lora_rank: the rank ``r`` of the update.
      out_features: size of the last output axis.
      base_module: a callable (usually a Module) whose output the update is added to.
      dtype: computation dtype; None promotes inputs and parameters together.
      param_dtype: dtype of ``lora_a`` and ``lora_b``.
      a_initializer: initializer of ``lora_a`` ``(in_features, lora_rank)``.
      b_initializer: initializer of ``lora_b`` ``(lora_rank, out_features)``.
      lora_param_type: the Variable type of the two parameters (``nnx.LoRAParam``).
      promote_dtype: casts ``(x, lora_a, lora_b)`` to the computation dtype.
      rngs: random streams; keys come from ``rngs.params()``.
      a_metadata: metadata of ``lora_a``.
      b_metadata: metadata of ``lora_b``.
    """

    def __init__(
        self,
        in_features: int,
        lora_rank: int,
        out_features: int,
        *,
        base_module: Callable[[jax.Array], jax.Array] | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        a_initializer: initializers.Initializer = default_a_initializer,
        b_initializer: initializers.Initializer = default_b_initializer,
        lora_param_type: type[Variable] = LoRAParam,
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        rngs: Rngs,
        a_metadata: Mapping[str, Any] = NO_METADATA,
        b_metadata: Mapping[str, Any] = NO_METADATA,
    ):
        if base_module is not None and not callable(base_module):
            raise ValueError(
                f"LoRA: base_module must be callable, got {type(base_module).__name__}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.lora_rank = lora_rank
        self.base_module = base_module
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.lora_param_type = lora_param_type
        self.promote_dtype = promote_dtype
        self.lora_a = create_param(
            "LoRA", "a", a_initializer, rngs.params(), (in_features, lora_rank), param_dtype,
            a_metadata, variable_type=lora_param_type,
        )
        self.lora_b = create_param(
            "LoRA", "b", b_initializer, rngs.params(), (lora_rank, out_features), param_dtype,
            b_metadata, variable_type=lora_param_type,
        )

    def __call__(self, x: jax.Array, **kwargs: Any) -> jax.Array:
        """``base_module(x, **kwargs) + x @ lora_a @ lora_b``.

        Without a base module the result is the update alone and ``kwargs`` are unused.
        """
        check_last_axis("LoRA", x, self.in_features)
        x_, a, b = self.promote_dtype((x, self.lora_a.value, self.lora_b.value), dtype=self.dtype)
        out = x_ @ a @ b
        if self.base_module is not None:
            out = self.base_module(x, **kwargs) + out
        return out


class LoRALinear(Linear):
    """A ``Linear`` layer plus a ``LoRA`` adapter stored in ``self.lora``.

    Args:
      in_features: size of the last input axis.
      out_features: size of the last output axis.
      lora_rank: the rank of the adapter.
      lora_dtype: computation dtype of the adapter.
      lora_param_dtype: dtype of the adapter parameters.
      a_initializer: initializer of ``lora.lora_a``.
      b_initializer: initializer of ``lora.lora_b`` (zeros: the layer starts as a ``Linear``).
      lora_param_type: Variable type of the adapter parameters.
      lora_promote_dtype: the adapter's ``promote_dtype``.
      rngs: random streams; keys come from ``rngs.params()``.
      a_metadata: metadata of ``lora.lora_a``.
      b_metadata: metadata of ``lora.lora_b``.
      **kwargs: the other ``Linear`` arguments (``use_bias``, ``kernel_init``, ``dtype``...).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        lora_rank: int,
        lora_dtype: Any = None,
        lora_param_dtype: Any = jnp.float32,
        a_initializer: initializers.Initializer = default_a_initializer,
        b_initializer: initializers.Initializer = default_b_initializer,
        lora_param_type: type[Variable] = LoRAParam,
        lora_promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        rngs: Rngs,
        a_metadata: Mapping[str, Any] = NO_METADATA,
        b_metadata: Mapping[str, Any] = NO_METADATA,
        **kwargs: Any,
    ):
        super().__init__(in_features, out_features, rngs=rngs, **kwargs)
        self.lora = LoRA(
            in_features, lora_rank, out_features, dtype=lora_dtype,
            param_dtype=lora_param_dtype, a_initializer=a_initializer,
            b_initializer=b_initializer, lora_param_type=lora_param_type,
            promote_dtype=lora_promote_dtype, rngs=rngs, a_metadata=a_metadata,
            b_metadata=b_metadata,
        )

    def __call__(self, x: jax.Array, out_sharding: Any = None) -> jax.Array:
        """The ``Linear`` output plus the adapter's ``x @ lora_a @ lora_b``."""
        return super().__call__(x, out_sharding=out_sharding) + self.lora(x)
