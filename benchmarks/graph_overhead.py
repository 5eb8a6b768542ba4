"""Time the graph API on a 48-layer MLP: ``split``, ``merge`` and ``update`` per call.

Prints microseconds per call and per Variable for each operation and for the three together
(the work a hand-rolled ``split -> jax.jit -> merge/update`` round trip does in Python).
A flax.nnx row is added when flax is installed.

    python benchmarks/graph_overhead.py [--layers 48] [--width 64] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def build_mlp(nnx: Any, layers: int, width: int) -> Any:
    """A stack of hand-written Linear modules (``nnx.Param`` kernel and bias) in a list."""

    class Linear(nnx.Module):
        def __init__(self, din: int, dout: int, *, rngs: Any):
            self.kernel = nnx.Param(jax.random.normal(rngs.params(), (din, dout)) / din**0.5)
            self.bias = nnx.Param(jnp.zeros((dout,)))

        def __call__(self, x: jax.Array) -> jax.Array:
            return x @ self.kernel + self.bias

    class MLP(nnx.Module):
        def __init__(self, *, rngs: Any):
            layer_list = [Linear(width, width, rngs=rngs) for _ in range(layers)]
            self.layers = nnx.List(layer_list) if hasattr(nnx, "List") else layer_list

        def __call__(self, x: jax.Array) -> jax.Array:
            for layer in self.layers:
                x = jax.nn.relu(layer(x))
            return x

    return MLP(rngs=nnx.Rngs(0))


def _median_us(fn: Callable[[], Any], number: int, repeats: int) -> float:
    """Median over ``repeats`` passes of the mean time of ``number`` calls, in microseconds."""
    for _ in range(max(1, number // 10)):  # warm-up
        fn()
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        passes.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(passes)


def measure(nnx: Any, layers: int, width: int, number: int, repeats: int) -> dict[str, float]:
    """Microseconds per call of split, merge, update and of the three in sequence."""
    model = build_mlp(nnx, layers, width)
    graphdef, state = nnx.split(model)

    def round_trip() -> None:
        g, s = nnx.split(model)
        nnx.merge(g, s)
        nnx.update(model, s)

    return {
        "split": _median_us(lambda: nnx.split(model), number, repeats),
        "merge": _median_us(lambda: nnx.merge(graphdef, state), number, repeats),
        "update": _median_us(lambda: nnx.update(model, state), number, repeats),
        "total": _median_us(round_trip, number, repeats),
    }


def count_variables(nnx: Any, layers: int, width: int) -> int:
    _, state = nnx.split(build_mlp(nnx, layers, width))
    return len(jax.tree.leaves(state))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--number", type=int, default=50, help="calls per timed pass")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes (median reported)")
    args = parser.parse_args()

    import nnx

    libraries: list[tuple[str, Any]] = [("nnx", nnx)]
    try:
        from flax import nnx as flax_nnx

        libraries.append(("flax.nnx", flax_nnx))
    except ImportError:
        pass

    n_vars = count_variables(nnx, args.layers, args.width)
    print(
        f"{args.layers}-layer MLP, width {args.width}: {n_vars} Variables; "
        f"median of {args.repeats} passes x {args.number} calls"
    )
    print(f"{'library':<10} {'op':<7} {'us/call':>10} {'us/Variable':>12}")
    for name, lib in libraries:
        times = measure(lib, args.layers, args.width, args.number, args.repeats)
        for op, us in times.items():
            print(f"{name:<10} {op:<7} {us:>10.1f} {us / n_vars:>12.2f}")


if __name__ == "__main__":
    main()
