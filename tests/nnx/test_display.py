"""nnx.display prints plain text outside notebooks."""

import jax.numpy as jnp
import numpy as np

import nnx


class Box(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((2, 3)))
        self.name = "box"


def test_display_prints_the_repr_outside_notebooks(capsys):
    box = Box()
    state = nnx.state(box)
    nnx.display(box, state)
    out = capsys.readouterr().out
    assert out == repr(box) + "\n" + repr(state) + "\n"
    assert "w=Param( # 6 (24 B)" in out and "name='box'" in out


def test_display_of_graphdef_lists_static_attributes(capsys):
    nnx.display(nnx.graphdef(Box()))
    out = capsys.readouterr().out
    assert out.startswith("GraphDef(BoxDef(")
    assert "name='box'" in out and "w=ParamDef(" in out


def test_dtypes_print_as_their_names_in_module_variable_and_graphdef_reprs():
    layer = nnx.Linear(2, 3, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert "  param_dtype=bfloat16,\n" in repr(layer)
    assert "  param_dtype=bfloat16,\n" in repr(nnx.graphdef(layer))

    v = nnx.Variable(
        jnp.zeros(2), a=jnp.float32, b=np.int8, c=np.dtype("float16"),
        d=(jnp.float32,), e={"x": jnp.int32, "y": "int32"}, f=[1, "s"],
    )
    lines = repr(v).splitlines()[2:-1]
    assert lines == [
        "  a=float32,", "  b=int8,", "  c=float16,", "  d=(float32,),",
        "  e={'x': int32, 'y': 'int32'},", "  f=[1, 's']",
    ]
