"""nnx.display prints plain text outside notebooks."""

import jax.numpy as jnp

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
