"""JAX transforms that understand graph nodes; ``__all__`` is re-exported at the top of ``nnx``."""

from nnx.transforms import general  # split_inputs / merge_inputs, as nnx.transforms.general
from nnx.transforms.autodiff import DiffState, checkpoint, grad, remat, value_and_grad
from nnx.transforms.axis_metadata import transform_metadata
from nnx.transforms.checking import checkify, make_jaxpr
from nnx.transforms.control import cond, eval_shape, shard_map, switch
from nnx.transforms.custom_vjp import custom_vjp
from nnx.transforms.jit import jit
from nnx.transforms.linearize import jvp, vjp
from nnx.transforms.loops import fori_loop, while_loop
from nnx.transforms.partial import cached_partial, jit_partial
from nnx.transforms.prefixes import Carry, PrefixState, StateAxes, StateSharding, prefix
from nnx.transforms.rng_splits import SplitBackups, restore_rngs, split_rngs
from nnx.transforms.scan import scan
from nnx.transforms.vmap import pmap, vmap

__all__ = [
    "Carry", "DiffState", "StateAxes", "StateSharding", "checkpoint", "cond", "custom_vjp", "eval_shape", "fori_loop", "grad",
    "jit", "jit_partial", "pmap", "prefix", "PrefixState", "remat", "restore_rngs", "scan",
    "shard_map", "split_rngs", "SplitBackups", "switch", "value_and_grad", "vmap", "while_loop",
    "cached_partial", "transform_metadata", "checkify", "jvp", "make_jaxpr", "vjp",
]
