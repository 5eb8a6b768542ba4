"""nnx.traversals: flat views of nested mappings."""

import pytest

import nnx
from nnx import traversals


def test_flatten_drops_empty_nodes_unless_kept_and_round_trips():
    xs = {"foo": 1, "bar": {"a": 2, "b": {}}}
    assert traversals.flatten_mapping(xs) == {("foo",): 1, ("bar", "a"): 2}
    kept = traversals.flatten_mapping(xs, keep_empty_nodes=True)
    assert kept == {("foo",): 1, ("bar", "a"): 2, ("bar", "b"): traversals.empty_node}
    assert traversals.unflatten_mapping(kept) == xs


def test_separator_and_is_leaf():
    xs = {"foo": {"c": 4}, "bar": {"a": 2, "b": {}}}
    assert traversals.flatten_mapping(xs, sep="/") == {"foo/c": 4, "bar/a": 2}
    assert traversals.unflatten_mapping({"foo/c": 4, "bar/a": 2}, sep="/") == {
        "foo": {"c": 4}, "bar": {"a": 2},
    }
    whole = traversals.flatten_mapping(xs, is_leaf=lambda path, x: path == ("bar",))
    assert whole == {("foo", "c"): 4, ("bar",): {"a": 2, "b": {}}}
    assert traversals.unflatten_mapping(whole) == xs


def test_state_is_a_mapping_to_flatten():
    state = nnx.State({"a": {"b": 1}})
    assert traversals.flatten_mapping(state) == {("a", "b"): 1}
    assert traversals.flatten_to_sequence(state) == [(("a", "b"), 1)]


def test_bad_keys_are_named():
    with pytest.raises(ValueError, match="non-empty tuples"):
        traversals.unflatten_mapping({"a": 1})
    with pytest.raises(TypeError, match="expects a mapping"):
        traversals.flatten_mapping([1, 2])
