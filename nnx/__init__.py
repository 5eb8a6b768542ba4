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
from nnx._contexts import (
    MergeContext,
    SplitContext,
    UpdateContext,
    current_update_context,
    merge_context,
    split_context,
    update_context,
)
from nnx._display import display
from nnx._graph_state import GraphState, as_pure, call, unpack, with_vars
from nnx._modes import set_graph_mode, set_graph_updates
from nnx._node_states import NodeStates, from_tree, to_tree
from nnx._tracing import TraceContextError
from nnx.filterlib import All, Any, Everything, Not, Nothing, OfType, PathContains, WithTag
from nnx.graph import (
    GraphDef,
    PureState,
    clone,
    find_duplicates,
    flatten,
    graphdef,
    iter_graph,
    map,
    merge,
    pop,
    recursive_map,
    split,
    state,
    unflatten,
    update,
    variables,
)
from nnx.module import (
    M,
    Module,
    capture,
    iter_children,
    iter_module_children,
    iter_modules,
    view,
    view_info,
    with_attributes,
)
from nnx.nn import *  # noqa: F403 - layers, activations, pooling (nnx.nn.__all__)
from nnx.nn import __all__ as _nn_all
from nnx.nn import initializers
from nnx.object import (
    Data,
    Dict,
    List,
    Object,
    Pytree,
    Static,
    check_pytree,
    data,
    dataclass,
    has_data,
    is_data,
    register_data_type,
    register_pytree_node,
    static,
)
from nnx.rnglib import Rngs, RngStream, fork_rngs, reseed, with_rngs
from nnx.spmd import (
    PARTITION_NAME,
    abstract_with_sharding,
    as_abstract,
    get_abstract_model,
    get_named_sharding,
    get_partition_spec,
    logical_axis_rules,
    with_partitioning,
)
from nnx.statelib import (
    FlatState,
    State,
    filter_state,
    from_flat_state,
    map_state,
    merge_state,
    replace_by_pure_dict,
    restore_int_paths,
    split_state,
    to_flat_state,
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
#   vars_as, pure   Flax's earlier names for ``with_vars`` and ``as_pure``.
#   checkpoint      the ``jax.checkpoint`` name for ``remat`` (in nnx.transforms).
#   summary         the module; calling it, ``nnx.summary(model, x)``, is ``nnx.tabulate``.
VariableState = Variable
vars_as = with_vars
pure = as_pure

__all__ = [
    # graph nodes and containers
    "Module", "M", "Object", "Pytree", "List", "Dict", "data", "static", "register_pytree_node",
    "Data", "Static", "dataclass", "register_data_type", "has_data", "check_pytree",
    # Variables
    "Variable", "Param", "BatchStat", "Cache", "Intermediate", "Perturbation", "OptState",
    "OptArray", "OptVariable", "RngState", "RngKey", "RngCount", "LoRAParam", "VariableState",
    "VariableMetadata", "with_metadata", "register_variable_name", "variable_name_from_type",
    "variable_type_from_name", "set_metadata", "var_defaults", "use_eager_sharding",
    "using_eager_sharding", "is_data", "A",
    # State
    "State", "FlatState", "filter_state", "merge_state", "split_state", "to_pure_dict",
    "replace_by_pure_dict", "to_flat_state", "from_flat_state", "restore_int_paths", "map_state",
    # filters
    "All", "Any", "Everything", "Not", "Nothing", "OfType", "PathContains", "WithTag",
    # the graph
    "GraphDef", "PureState", "GraphState", "split", "merge", "update", "state", "variables",
    "graphdef", "clone", "pop", "flatten", "unflatten", "iter_graph", "iter_children",
    "iter_module_children", "iter_modules", "find_duplicates", "recursive_map", "map", "unpack",
    "call", "as_pure", "pure", "with_vars", "vars_as",
    # split / merge / update contexts
    "SplitContext", "split_context", "MergeContext", "merge_context", "UpdateContext",
    "NodeStates", "to_tree", "from_tree",
    "update_context", "current_update_context",
    # views and captures
    "view", "view_info", "with_attributes", "capture",
    # graph mode / tree mode
    "set_graph_mode", "set_graph_updates",
    # randomness, sharding, display, errors
    "Rngs", "RngStream", "reseed", "fork_rngs", "with_rngs", "with_partitioning",
    "get_partition_spec", "get_named_sharding", "PARTITION_NAME", "as_abstract",
    "abstract_with_sharding", "get_abstract_model", "logical_axis_rules", "display", "tabulate",
    "TraceContextError",
    # public submodules
    "filterlib", "graph", "module", "nn", "object", "rnglib", "spmd",
    "statelib", "summary", "training", "transforms", "traversals", "variablelib",
    *_nn_all,
    *_training_all,
    *_transforms_all,
]
