import jax.numpy as jnp

import nnx


def test_import_and_param():
    p = nnx.Param(jnp.ones(3))
    assert p.shape == (3,)


def test_public_api_is_all_and_internal_modules_are_private():
    import types

    public = {n for n in dir(nnx) if not n.startswith("_")}
    assert public == set(nnx.__all__)
    modules = {n for n in public if isinstance(getattr(nnx, n), types.ModuleType)}
    assert modules == {
        "filterlib", "graph", "initializers", "metrics", "module", "nn", "object", "rnglib",
        "spmd", "statelib", "summary", "training", "transforms", "traversals", "variablelib",
    }


def test_summary_is_the_module_and_calling_it_tabulates():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    assert nnx.summary.tabulate is nnx.tabulate
    assert nnx.summary(model) == nnx.tabulate(model)


def test_all_lists_each_name_once():
    assert len(nnx.__all__) == len(set(nnx.__all__))
