"""nnx: a module system for JAX with reference semantics (the Flax NNX API, ``import nnx``).

The public API is ``__all__`` below: the core (graph nodes, Variables, State, filters, Rngs, the
graph functions), the layers of ``nnx.nn``, the transforms of ``nnx.transforms`` and the
training pieces of ``nnx.training``, all re-exported here. Public submodules keep Flax's names
(``nnx.graph``, ``nnx.module``, ``nnx.object``, ``nnx.nn``, ``nnx.initializers``,
``nnx.metrics``, ``nnx.filterlib``, ``nnx.rnglib``, ``nnx.statelib``, ``nnx.variablelib``,
``nnx.spmd``, ``nnx.summary``, ``nnx.transforms``, ``nnx.training``); modules whose names start
with ``_`` are internal.
"""

from nnx import (
    filterlib,
    graph,
    module,
    nn,
    object,
    rnglib,
    spmd,
    statelib,
    summary,
    training,
    transforms,
    traversals,
    variablelib,
)
from nnx._display import display
from nnx._modes import set_graph_mode, set_graph_updates
from nnx._tracing import TraceContextError
from nnx.filterlib import All, Any, Everything, Not, Nothing, OfType, PathContains, WithTag
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
from nnx.nn import *  # noqa: F403 - layers, activations, pooling (nnx.nn.__all__)
from nnx.nn import __all__ as _nn_all
from nnx.nn import initializers
from nnx.object import Dict, List, Object, Pytree, data, is_data, register_pytree_node, static
from nnx.rnglib import Rngs, RngStream, reseed
from nnx.spmd import get_named_sharding, get_partition_spec, with_partitioning
from nnx.statelib import (
    State,
    filter_state,
    merge_state,
    replace_by_pure_dict,
    split_state,
    to_pure_dict,
)
from nnx.summary import tabulate
from nnx.training import *  # noqa: F403 - Optimizer, metrics (nnx.training.__all__)
from nnx.training import __all__ as _training_all
from nnx.transforms import *  # noqa: F403 - jit, grad, vmap, scan... (nnx.transforms.__all__)
from nnx.transforms import __all__ as _transforms_all
from nnx.variablelib import (
    A,
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
    set_metadata,
    use_eager_sharding,
    using_eager_sharding,
    var_defaults,
    variable_name_from_type,
    variable_type_from_name,
    with_metadata,
)

# Names kept only so that code written for other Flax NNX versions runs unchanged:
#   VariableState   Flax < 0.11: the State leaf type; a Variable is its own state now.
#   Pytree          Flax 0.12's name for the base class that nnx calls Object.
#   OptArray, OptVariable   Flax's other names for OptState.
#   variables       Flax 0.10's name for ``state``.
#   checkpoint      the ``jax.checkpoint`` name for ``remat`` (in nnx.transforms).
#   summary         the module; calling it, ``nnx.summary(model, x)``, is ``nnx.tabulate``.
VariableState = Variable

__all__ = [
    # graph nodes and containers
    "Module", "Object", "Pytree", "List", "Dict", "data", "static", "register_pytree_node",
    # Variables
    "Variable", "Param", "BatchStat", "Cache", "Intermediate", "Perturbation", "OptState",
    "OptArray", "OptVariable", "RngState", "RngKey", "RngCount", "LoRAParam", "VariableState",
    "VariableMetadata", "with_metadata", "register_variable_name", "variable_name_from_type",
    "variable_type_from_name", "set_metadata", "var_defaults", "use_eager_sharding",
    "using_eager_sharding", "is_data", "A",
    # State
    "State", "filter_state", "merge_state", "split_state", "to_pure_dict", "replace_by_pure_dict",
    # filters
    "All", "Any", "Everything", "Not", "Nothing", "OfType", "PathContains", "WithTag",
    # the graph
    "GraphDef", "split", "merge", "update", "state", "variables", "graphdef", "clone", "pop",
    "flatten", "unflatten", "iter_graph", "iter_children", "find_duplicates", "map_state",
    # graph mode / tree mode
    "set_graph_mode", "set_graph_updates",
    # randomness, sharding, display, errors
    "Rngs", "RngStream", "reseed", "with_partitioning", "get_partition_spec",
    "get_named_sharding", "display", "tabulate", "TraceContextError",
    # public submodules
    "filterlib", "graph", "module", "nn", "object", "rnglib", "spmd",
    "statelib", "summary", "training", "transforms", "traversals", "variablelib",
    *_nn_all,
    *_training_all,
    *_transforms_all,
]
