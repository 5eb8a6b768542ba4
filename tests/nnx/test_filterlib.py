"""Filters: every kind, through nnx.state and the predicates themselves."""

import jax.numpy as jnp
import pytest

import nnx
from nnx import filterlib


class Count(nnx.Variable):
    pass


class Net(nnx.Module):
    def __init__(self):
        self.encoder = Inner()
        self.decoder = Inner()
        self.n = Count(jnp.array(0))
        self.rngs = nnx.Rngs(dropout=0)


class Inner(nnx.Module):
    def __init__(self):
        self.kernel = nnx.Param(jnp.ones((2, 2)))
        self.lora = nnx.LoRAParam(jnp.ones((2, 1)))
        self.mean = nnx.BatchStat(jnp.zeros(2))


def _paths(f):
    return ["/".join(map(str, p)) for p, _ in nnx.state(Net(), f).flat_state()]


def test_type_filter_uses_isinstance():
    assert _paths(nnx.Param) == [
        "decoder/kernel", "decoder/lora", "encoder/kernel", "encoder/lora",
    ]
    assert _paths(nnx.LoRAParam) == ["decoder/lora", "encoder/lora"]
    assert _paths(Count) == ["n"]
    assert _paths(nnx.OfType(nnx.BatchStat)) == ["decoder/mean", "encoder/mean"]


def test_string_filter_matches_a_path_part_or_a_stream_tag():
    assert _paths("encoder") == ["encoder/kernel", "encoder/lora", "encoder/mean"]
    assert _paths("mean") == ["decoder/mean", "encoder/mean"]
    assert _paths("dropout") == ["rngs/dropout/count", "rngs/dropout/key"]


def test_tuple_and_list_filters_match_any():
    assert _paths((Count, "decoder")) == [
        "decoder/kernel", "decoder/lora", "decoder/mean", "n",
    ]
    assert _paths([Count, nnx.RngCount]) == ["n", "rngs/dropout/count"]


def test_ellipsis_true_everything_and_false_none_nothing():
    everything = _paths(...)
    assert len(everything) == 9
    assert _paths(True) == everything
    assert _paths(nnx.Everything()) == everything
    assert _paths(False) == []
    assert _paths(None) == []
    assert _paths(nnx.Nothing()) == []


def test_callable_filter_gets_path_and_value():
    def small(path, value):
        return value.size == 2 and path[0] == "encoder"

    assert _paths(small) == ["encoder/lora", "encoder/mean"]


def test_all_any_not_combinators():
    assert _paths(nnx.All(nnx.Param, "encoder")) == ["encoder/kernel", "encoder/lora"]
    assert _paths(nnx.Any(Count, nnx.BatchStat)) == ["decoder/mean", "encoder/mean", "n"]
    assert _paths(nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))) == [
        "decoder/kernel", "encoder/kernel",
    ]
    assert _paths(nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat, nnx.RngState))) == ["n"]


def test_path_contains_exact_and_substring():
    assert _paths(nnx.PathContains("kernel")) == ["decoder/kernel", "encoder/kernel"]
    assert _paths(nnx.PathContains("coder")) == []
    assert len(_paths(nnx.PathContains("coder", exact=False))) == 6


def test_with_tag_matches_rng_stream_state():
    assert _paths(nnx.WithTag("dropout")) == ["rngs/dropout/count", "rngs/dropout/key"]


def test_filters_compare_equal_by_content():
    assert nnx.OfType(nnx.Param) == nnx.OfType(nnx.Param)
    assert nnx.PathContains("a") == nnx.PathContains("a") != nnx.PathContains("b")
    assert nnx.All(nnx.Param, "a") == nnx.All(nnx.Param, "a")
    assert hash(nnx.Not(nnx.Param)) == hash(nnx.Not(nnx.Param))
    assert nnx.Everything() == nnx.Everything() and nnx.Nothing() == nnx.Nothing()


def test_unknown_filter_kind_raises():
    with pytest.raises(TypeError, match="Unknown filter 3.5 of type float"):
        nnx.state(Net(), 3.5)
    with pytest.raises(TypeError, match="Unknown filter"):
        filterlib.to_predicate(object())


def test_ellipsis_only_last():
    with pytest.raises(ValueError, match="can only be used as the last filters"):
        filterlib.filters_to_predicates((..., nnx.Param))
    assert len(filterlib.filters_to_predicates((nnx.Param, ...))) == 2


def test_with_tag_matches_objects_with_a_tag_attribute():
    stream = nnx.RngStream(0, tag="dropout")
    assert nnx.WithTag("dropout")((), stream) and not nnx.WithTag("params")((), stream)
    assert nnx.WithTag("dropout")(("key",), stream.key)


def test_filter_classes_given_uncalled():
    import pytest

    import nnx

    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    assert len(nnx.state(model, nnx.Everything)) == 2  # as Everything()
    assert len(nnx.state(model, nnx.Nothing)) == 0
    with pytest.raises(TypeError, match=r"nnx.Not is a filter class, not a filter: call it"):
        nnx.state(model, nnx.Not)
