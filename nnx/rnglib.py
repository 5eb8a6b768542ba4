"""Random-number streams whose keys and counters are Variables, so they move with the State.

A stream hands out ``fold_in(key, count)`` and increments ``count``. ``Rngs`` holds named
streams. Besides raw keys, streams and Rngs offer every ``jax.random`` sampler
(``rngs.normal((2, 3))``) and the ``jax.nn.initializers`` constructors as keyless
initializers (``rngs.lecun_normal()((2, 3))``), each drawing a fresh key.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from nnx import _eager, filterlib
from nnx._tracing import check_same_trace
from nnx._walks import iter_graph, recursive_map
from nnx.graph import graph_flag
from nnx.object import Object
from nnx.variablelib import RngCount, RngKey, RngState

F = TypeVar("F", bound=Callable[..., Any])
_MISSING: Any = object()

_SAMPLERS = (
    "bits", "uniform", "randint", "permutation", "choice", "normal", "multivariate_normal",
    "truncated_normal", "bernoulli", "beta", "cauchy", "dirichlet", "exponential", "gamma",
    "loggamma", "poisson", "gumbel", "categorical", "laplace", "logistic", "pareto", "t",
    "chisquare", "f", "rademacher", "maxwell", "double_sided_maxwell", "weibull_min",
    "orthogonal", "generalized_normal", "ball", "rayleigh", "wald", "geometric", "triangular",
    "lognormal", "binomial", "multinomial",
)
# jax.nn.initializers constructors; normal, uniform, orthogonal and truncated_normal are the
# jax.random samplers above, and the constant ones take no key.
_INITIALIZERS = (
    "delta_orthogonal", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform",
    "kaiming_normal", "kaiming_uniform", "lecun_normal", "lecun_uniform", "variance_scaling",
    "xavier_normal", "xavier_uniform",
)

NotKey = filterlib.All(RngState, filterlib.Not(RngKey))


def _seed_key(seed: int) -> jax.Array:
    """``jax.random.key(seed)``; outside a trace, for a threefry key of a seed in
    ``[0, 2**31)`` (whose key data is ``[0, seed]`` with or without x64), built from that data
    on the host instead of by a compiled seeding program."""
    if (
        0 <= seed < 2**31
        and jax.config.jax_default_prng_impl == "threefry2x32"
        and _eager.host_placement_ok()
    ):
        return jax.random.wrap_key_data(np.array([0, seed], np.uint32), impl="threefry2x32")
    return jax.random.key(seed)


def _zero_count(shape: tuple[int, ...]) -> jax.Array:
    """A stream's count of ``shape``: ``jnp.zeros(shape, uint32)``, made on the host outside a
    trace."""
    if _eager.host_placement_ok():
        return _eager.to_device(np.zeros(shape, np.uint32))
    return jnp.zeros(shape, dtype=jnp.uint32)


@jax.jit
def _next_key(key: jax.Array, count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(fold_in(key, count), count + 1)`` as one compiled program (integer ops: the bits of
    the two eager ops), where ``_eager.fold_in_on_host`` does not apply."""
    return jax.random.fold_in(key, count), count + 1


def _as_key(seed: Any) -> jax.Array:
    if isinstance(seed, int | np.integer):
        return _seed_key(int(seed))
    if isinstance(seed, jax.Array | np.ndarray):
        if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            return seed
        if seed.dtype == jnp.uint32 and seed.ndim >= 1 and seed.shape[-1] == 2:
            return jax.random.wrap_key_data(seed)
        if jnp.issubdtype(seed.dtype, jnp.integer) and seed.ndim == 0:
            return jax.random.key(seed)
    raise TypeError(
        f"An RNG stream needs an int seed or a JAX key, got {type(seed).__name__} "
        f"{getattr(seed, 'dtype', '')}"
    )


def _shape(k: int | Sequence[int]) -> tuple[int, ...]:
    return (k,) if isinstance(k, int) else tuple(k)


class RngStream(Object):
    """One named stream: each call returns ``fold_in(key, count)`` and increments ``count``.

    Args:
      key: an int seed or a JAX key (typed or raw ``uint32[2]``), possibly batched.
      tag: the stream's name; its Variables carry it as ``tag`` metadata.
    """

    def __init__(self, key: Any, *, tag: str):
        key = _as_key(key)
        self.key = RngKey(key, tag=tag)
        self.count = RngCount(_zero_count(key.shape), tag=tag)
        self.tag = tag

    def __call__(self) -> jax.Array:
        check_same_trace(self.count, self.count._trace)  # before a key of a foreign trace is used
        key, count = self.key.get_value(), self.count.get_value()
        on_host = _eager.fold_in_on_host(key, count)
        if on_host is not None:
            key, count = on_host
        elif _eager.outside_trace() and jnp.shape(key) == () and jnp.shape(count) == ():
            key, count = _next_key(key, count)
        else:
            key, count = jax.random.fold_in(key, count), count + 1
        self.count.set_value(count)
        return key

    def fork(self, *, split: int | tuple[int, ...] | None = None) -> RngStream:
        """A new independent stream seeded from this one (with ``split`` leading key axes)."""
        key = self()
        if split is not None:
            key = jax.random.split(key, split)
        return type(self)(key, tag=self.tag)

    def split(self, k: int | tuple[int, ...]) -> RngStream:
        """A new stream whose key has leading axis (or axes) ``k`` of distinct keys, for
        ``vmap`` or ``scan``."""
        return type(self)(jax.random.split(self(), k), tag=self.tag)

    def broadcast(self, k: int | tuple[int, ...]) -> RngStream:
        """A new stream whose key is one fresh key repeated over leading axes ``k``."""
        key = self()
        return type(self)(jnp.broadcast_to(key, _shape(k) + key.shape), tag=self.tag)


def _sampler(name: str) -> Callable[..., jax.Array]:
    fn = getattr(jax.random, name)

    def sampler(self: Any, *args: Any, **kwargs: Any) -> jax.Array:
        return fn(self(), *args, **kwargs)

    sampler.__name__ = name
    sampler.__doc__ = f"``jax.random.{name}`` with a fresh key from this stream."
    return sampler


def _initializer(name: str) -> Callable[..., Callable[..., jax.Array]]:
    make = getattr(jax.nn.initializers, name)

    def initializer(self: Any, *args: Any, **kwargs: Any) -> Callable[..., jax.Array]:
        init = make(*args, **kwargs)

        def keyless(*init_args: Any, **init_kwargs: Any) -> jax.Array:
            return init(self(), *init_args, **init_kwargs)

        return keyless

    initializer.__name__ = name
    initializer.__doc__ = (
        f"``jax.nn.initializers.{name}(...)`` as an initializer that takes no key: "
        "``init(shape, dtype)`` draws a fresh key from this stream."
    )
    return initializer


class Rngs(Object):
    """A set of named random streams: ``Rngs(0)``, ``Rngs(params=0, dropout=1)``.

    ``rngs.params()`` or ``rngs['params']()`` returns a new key from stream ``params``; a name
    without a stream falls back to ``default``; ``rngs()`` uses ``default``.

    Args:
      default: seed or key of the ``default`` stream, or a mapping of streams (optional).
      **streams: seeds, keys or RngStreams (whose current key is taken) of named streams.
    """

    def __init__(self, default: Any = None, /, **streams: Any):
        if isinstance(default, Mapping):
            streams = {**default, **streams}
        elif default is not None:
            streams = {"default": default, **streams}
        for name, value in streams.items():
            if isinstance(value, RngStream):
                value = value.key.get_value()
            setattr(self, name, RngStream(value, tag=name))

    def _streams(self) -> dict[str, RngStream]:
        return {k: v for k, v in dict.items(vars(self)) if isinstance(v, RngStream)}

    def _get(self, name: str, error: type[Exception]) -> RngStream:
        d = vars(self)
        if name in d:
            return d[name]
        if "default" in d:
            return d["default"]
        raise error(
            f"No RngStream named {name!r} found in Rngs, and no 'default' stream to fall back "
            f"to; this Rngs has {sorted(self._streams()) or 'no streams'}. Create it with "
            f"nnx.Rngs({name}=seed), or nnx.Rngs(seed) for a default stream."
        )

    def __getattr__(self, name: str) -> RngStream:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._get(name, AttributeError)

    def __getitem__(self, name: str) -> RngStream:
        return self._get(name, KeyError)

    def __call__(self) -> jax.Array:
        return self._get("default", AttributeError)()

    def __contains__(self, name: object) -> bool:
        return name in self._streams()

    def __iter__(self) -> Iterator[str]:
        return iter(self._streams())

    def __len__(self) -> int:
        return len(self._streams())

    def items(self) -> Iterator[tuple[str, RngStream]]:
        return iter(self._streams().items())

    def _per_stream(
        self, rule: Any, apply: Callable[[RngStream, Any], RngStream]
    ) -> Rngs:
        """New Rngs: each stream replaced by ``apply(stream, value)`` for the first filter of
        ``rule`` (a mapping from filters; an int or tuple means ``{...: rule}``) it matches,
        kept when it matches none or its value is None."""
        if not isinstance(rule, Mapping):
            rule = {...: rule}
        predicates = [(filterlib.to_predicate(f), v) for f, v in rule.items()]
        new = {}
        for name, stream in self.items():
            value = next((v for p, v in predicates if p((name,), stream)), None)
            new[name] = stream if value is None else apply(stream, value)
        return Rngs(**new)

    def split(self, k: Any) -> Rngs:
        """New streams with ``k`` distinct keys (a leading axis or axes) each, for vmap or
        scan; ``k`` may map filters to sizes (None: not split)."""
        return self._per_stream(k, RngStream.split)

    def broadcast(self, k: Any) -> Rngs:
        """New streams whose key is one fresh key repeated over leading axes ``k`` (or per
        filter, as for ``split``)."""
        return self._per_stream(k, RngStream.broadcast)

    def fork(self, *, split: Any = None) -> Rngs:
        """New independent streams seeded from these (with ``split`` leading key axes, per
        filter as for ``split``)."""
        rule = {} if split is None else split if isinstance(split, Mapping) else {...: split}
        predicates = [(filterlib.to_predicate(f), v) for f, v in rule.items()]
        new = {}
        for name, stream in self.items():
            value = next((v for p, v in predicates if p((name,), stream)), None)
            new[name] = stream.fork(split=value)
        return Rngs(**new)


for _name in _SAMPLERS:
    setattr(RngStream, _name, _sampler(_name))
    setattr(Rngs, _name, _sampler(_name))
for _name in _INITIALIZERS:
    setattr(RngStream, _name, _initializer(_name))
    setattr(Rngs, _name, _initializer(_name))


# -- changing the streams of a graph -----------------------------------------------------------


def _stream_matches(predicate: Callable, path: tuple, stream: RngStream) -> bool:
    return predicate((*path, "key"), stream.key) and predicate((*path, "count"), stream.count)


def with_rngs(
    node: Any = _MISSING, /, *, split: Any = None, fork: Any = None, broadcast: Any = None,
    only: Any = True, graph: bool | None = None, graph_updates: bool | None = None,
) -> Any:
    """A copy of ``node`` whose RngStreams are split, broadcast or forked by rules; or,
    without ``node``, a decorator applying it to a function's arguments.

    Args:
      node: a pytree or graph holding RngStreams (an Rngs, a Module...).
      split: sizes of distinct keys: an int or tuple for every stream, or a mapping from
        filters to them (the first matching filter wins).
      fork: a filter (or list of filters) of streams to fork (``...`` for all the others).
      broadcast: like ``split``, with one key repeated.
      only: a filter on the streams to consider.
      graph: graph mode (True) or tree mode (False); None: the current setting.
      graph_updates: must not be True together with graph mode (nothing is changed in place).
    """
    from nnx._modes import resolve

    mode = resolve(graph, graph_updates)
    if mode.full:
        raise NotImplementedError(
            "nnx.with_rngs returns new streams; it does not support graph=True with "
            "graph_updates=True. Pass graph_updates=False (or use nnx.split_rngs / "
            "nnx.fork_rngs to change streams in place)."
        )
    if node is _MISSING:
        def decorator(f: F) -> F:
            @functools.wraps(f)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                args, kwargs = with_rngs(
                    (args, kwargs), split=split, fork=fork, broadcast=broadcast, only=only,
                    graph=mode.graph, graph_updates=False,
                )
                return f(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return decorator

    def rules(spec: Any) -> list[tuple[Any, Callable, Any]]:
        if spec is None:
            return []
        spec = spec if isinstance(spec, Mapping) else {...: spec}
        return [(f, filterlib.to_predicate(f), v) for f, v in spec.items()]

    forks = [] if fork is None else [fork] if isinstance(fork, str) or not isinstance(
        fork, list | tuple) else list(fork)
    kinds = {
        "split": rules(split), "broadcast": rules(broadcast),
        "fork": [(f, filterlib.to_predicate(f), None) for f in forks],
    }
    selected = filterlib.to_predicate(only)

    def change(path: tuple, x: Any) -> Any:
        if not isinstance(x, RngStream) or not selected(path, x):
            return x
        matched = {}
        for kind, kind_rules in kinds.items():
            hit = next(((f, v) for f, p, v in kind_rules if p(path, x)), None)
            if hit is not None:
                matched[kind] = hit
        specific = [k for k, (f, _) in matched.items() if f is not Ellipsis and f is not True]
        if len(specific) > 1:
            lines = "\n".join(f"  - {k} matches filter {f!r}" for k, (f, _) in matched.items())
            raise ValueError(f"RngStream at path {path} matches multiple rules:\n{lines}")
        if "split" in matched:
            return x.split(matched["split"][1])
        if "broadcast" in matched:
            return x.broadcast(matched["broadcast"][1])
        if "fork" in matched:
            return x.fork()
        return x

    return recursive_map(change, node, graph=mode.graph)


def fork_rngs(
    node: Any = _MISSING, /, *, split: Any = None, graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Fork every RngStream of ``node`` (``split`` gives key axes, per filter as for
    ``Rngs.split``): in place, returning backups for ``nnx.restore_rngs`` (or a ``with``
    block), in graph mode with graph updates; otherwise returning a forked copy. Without
    ``node``, a decorator forking a function's arguments for each call.

    Args:
      node: the graph holding the streams.
      split: key axes for the forked streams, or a mapping from filters to them.
      graph: graph mode (True) or tree mode (False); None: the current setting.
      graph_updates: fork in place (True) or return a copy (False); None: the setting.
    """
    from nnx._modes import resolve

    mode = resolve(graph, graph_updates)
    if node is _MISSING:
        def decorator(f: F) -> F:
            @functools.wraps(f)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if mode.full:
                    with fork_rngs((args, kwargs), split=split, graph=True, graph_updates=True):
                        return f(*args, **kwargs)
                args, kwargs = fork_rngs(
                    (args, kwargs), split=split, graph=mode.graph, graph_updates=False
                )
                return f(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return decorator
    rule = {...: None} if split is None else split if isinstance(split, Mapping) else {...: split}
    predicates = [(filterlib.to_predicate(f), v) for f, v in rule.items()]

    def forked(path: tuple, stream: RngStream) -> RngStream | None:
        for predicate, value in predicates:
            if _stream_matches(predicate, path, stream):
                return stream.fork(split=value)
        return None

    if not mode.full:
        def change(path: tuple, x: Any) -> Any:
            new = forked(path, x) if isinstance(x, RngStream) else None
            return x if new is None else new

        return recursive_map(change, node, graph=mode.graph)
    from nnx.transforms.rng_splits import SplitBackups  # the transforms build on this module

    backups = []
    for path, stream in iter_graph(node, graph=True):
        if isinstance(stream, RngStream):
            key, count = stream.key.get_value(), stream.count.get_value()
            new = forked(path, stream)
            if new is not None:
                backups.append((stream, key, count))
                stream.key.set_value(new.key.get_value())
                stream.count.set_value(new.count.get_value())
    return SplitBackups(backups)


def backup_keys(node: Any, /, *, graph: bool | None = None) -> list[tuple[RngStream, Any]]:
    """``(stream, key)`` for every RngStream of ``node``, to put the keys back later."""
    return [
        (s, s.key.get_value()) for _, s in iter_graph(node, graph=graph)
        if isinstance(s, RngStream)
    ]


def _scalars_only(path: tuple, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    if shape != ():
        raise ValueError(
            f"Cannot reseed the stream at path {path!r}: its key has shape {shape}, not a "
            "scalar. Pass policy='match_shape' to split the new key to that shape, or a "
            "callable (path, key, shape) -> new key."
        )
    return key


def _match_shape(path: tuple, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return key if shape == () else jax.random.split(key, shape)


def reseed(
    node: Any, /, *, graph: bool | None = None, policy: str | Callable = "scalars_only",
    **stream_keys: Any,
) -> None:
    """Give the streams of ``node`` named in ``stream_keys`` new keys (and zero counts): the
    keys a fresh ``nnx.Rngs(**stream_keys)`` hands out, so a model reseeded with the seeds it
    was built with draws the same random numbers again.

    Args:
      node: the graph holding the streams.
      graph: graph mode (True) or tree mode (False); None: the current setting.
      policy: for a stream with a batched key: ``'scalars_only'`` (raise), ``'match_shape'``
        (split the new key to its shape) or a callable ``(path, key, shape) -> key``.
      **stream_keys: stream names and their seeds or keys.
    """
    if policy == "scalars_only":
        policy = _scalars_only
    elif policy == "match_shape":
        policy = _match_shape
    elif not callable(policy):
        raise ValueError(f"reseed: policy must be 'scalars_only', 'match_shape' or a callable, got {policy!r}")
    fresh = Rngs(**stream_keys)
    for path, stream in iter_graph(node, graph=graph_flag(graph)):
        if isinstance(stream, RngStream) and stream.tag in stream_keys:
            key = policy(path, fresh[stream.tag](), tuple(stream.key.shape))
            stream.key.set_value(key)
            stream.count.set_value(_zero_count(key.shape))


__all__ = [
    "NotKey", "RngCount", "RngKey", "RngState", "RngStream", "Rngs", "backup_keys",
    "fork_rngs", "reseed", "with_rngs",
]
