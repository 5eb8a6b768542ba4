"""nnx.view / nnx.with_attributes / nnx.view_info: copies in another mode sharing Variables."""

import pytest

import nnx


class Block(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(2, 5, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, deterministic=False, rngs=rngs)
        self.batch_norm = nnx.BatchNorm(5, use_running_average=False, rngs=rngs)


@pytest.mark.parametrize("graph", [True, False])
def test_view_sets_modes_on_a_copy_sharing_variables(graph):
    block = Block(nnx.Rngs(0))
    view = nnx.view(block, deterministic=True, use_running_average=True, graph=graph)
    assert view.dropout.deterministic and view.batch_norm.use_running_average
    assert not block.dropout.deterministic  # the model keeps its mode
    assert view.linear.kernel is block.linear.kernel
    only = nnx.view(block, only=nnx.Dropout, deterministic=True, graph=graph)
    assert only.dropout.deterministic and not only.batch_norm.use_running_average
    with pytest.raises(ValueError, match=r"Unused keys found in nnx.view: \['unknown'\]"):
        nnx.view(block, deterministic=True, unknown=True, graph=graph)


def test_with_attributes_copies_with_attributes_set():
    block = Block(nnx.Rngs(0))
    new = nnx.with_attributes(block, deterministic=True, use_running_average=True)
    assert new.dropout.deterministic and not block.dropout.deterministic
    assert new.linear.kernel is block.linear.kernel
    with pytest.raises(ValueError, match=r"following attributes: \['unknown'\]"):
        nnx.with_attributes(block, unknown=True)
    assert nnx.with_attributes(block, unknown=True, raise_if_not_found=False) is not block


def test_view_info_lists_set_view_arguments():
    class Custom(nnx.Module):
        def set_view(self, arg1: bool | None = None, **kwargs) -> dict:
            """Custom view.

            Args:
              arg1: The first argument.
                Two lines.
            """
            return kwargs

    info = nnx.view_info(Custom())
    assert info == (
        f"{Custom.__qualname__}:\n  arg1: bool | None = None\n    The first argument.\n"
        "    Two lines."
    )
    text = nnx.view_info(Block(nnx.Rngs(0)))
    assert text.count("Dropout:") == 1 and text.count("BatchNorm:") == 1
    assert nnx.view_info(Block(nnx.Rngs(0)), only=nnx.MultiHeadAttention) == ""
