"""nnx: a module system for JAX with reference semantics (the Flax NNX API, ``import nnx``)."""

from nnx import filters
from nnx.display import display
from nnx.filters import All, Any, Everything, Not, Nothing, OfType, PathContains, WithTag
from nnx.graph import (
    GraphDef,
    clone,
    find_duplicates,
    flatten,
    graphdef,
    iter_children,
    iter_graph,
    map_state,
    merge,
    pop,
    split,
    state,
    unflatten,
    update,
    variables,
)
from nnx.module import Module
from nnx.object import Dict, List, Object, Pytree, data, register_pytree_node, static
from nnx.rngs import Rngs, RngStream, reseed
from nnx.spmd import get_named_sharding, get_partition_spec, with_partitioning
from nnx.state import (
    State,
    filter_state,
    merge_state,
    replace_by_pure_dict,
    split_state,
    to_pure_dict,
)
from nnx.tracing import TraceContextError
from nnx.variables import (
    BatchStat,
    Cache,
    Intermediate,
    LoRAParam,
    OptArray,
    OptState,
    OptVariable,
    Param,
    Perturbation,
    RngCount,
    RngKey,
    RngState,
    Variable,
    VariableMetadata,
    register_variable_name,
    variable_name_from_type,
    variable_type_from_name,
    with_metadata,
)

VariableState = Variable

from nnx.nn import *  # noqa: E402,F403 - layers, activations, pooling (nnx.nn.__all__)
from nnx.nn import initializers  # noqa: E402
from nnx.training import *  # noqa: E402,F403 - Optimizer, metrics (nnx.training.__all__)
from nnx.transforms import *  # noqa: E402,F403 - jit, grad, vmap, scan... (nnx.transforms.__all__)
