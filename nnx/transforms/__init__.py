"""JAX transforms that understand graph nodes; ``__all__`` is re-exported at the top of ``nnx``."""

from nnx.transforms.autodiff import DiffState, checkpoint, grad, remat, value_and_grad
from nnx.transforms.control import cond, eval_shape, shard_map, switch
from nnx.transforms.custom_vjp import custom_vjp
from nnx.transforms.iteration import (
    Carry,
    StateAxes,
    fori_loop,
    pmap,
    scan,
    split_rngs,
    vmap,
    while_loop,
)
from nnx.transforms.jit import jit, jit_partial
from nnx.transforms.prefixes import PrefixState, StateSharding, prefix

__all__ = [
    "Carry", "DiffState", "StateAxes", "StateSharding", "checkpoint", "cond", "custom_vjp", "eval_shape", "fori_loop", "grad",
    "jit", "jit_partial", "pmap", "prefix", "PrefixState", "remat", "scan", "shard_map", "split_rngs", "switch", "value_and_grad", "vmap",
    "while_loop",
]
