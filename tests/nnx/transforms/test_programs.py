"""ProgramCache: a bounded least-recently-used map from static structure to programs."""

from nnx.transforms.programs import ProgramCache


def test_a_miss_makes_a_hit_reuses_and_the_least_recently_used_goes_first():
    cache = ProgramCache(maxsize=2)
    made = []

    def make(key):
        def f():
            made.append(key)
            return f"program {key}"

        return f

    assert cache.get("a", make("a")) == "program a"
    assert cache.get("b", make("b")) == "program b"
    assert cache.get("a", make("a")) == "program a"  # a hit, and "a" is now the most recent
    cache.get("c", make("c"))  # evicts "b"
    assert len(cache) == 2
    cache.get("a", make("a"))
    cache.get("b", make("b"))
    assert made == ["a", "b", "c", "b"]
