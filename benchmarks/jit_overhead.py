"""Per-step cost of ``nnx.jit`` + ``nnx.value_and_grad`` + ``nnx.Optimizer`` against the same
Adam train step written as a pure function under ``jax.jit`` with donated buffers.

Models: (a) a 48-layer 64-wide MLP at batch 16, (b) a 64-32-10 MLP at batch 32. Timed passes
alternate between implementations (each pass >= 200 steps ended by ``block_until_ready``);
medians over the passes are printed, with the ratio to the pure-JAX step.
Run: ``python benchmarks/jit_overhead.py [--passes 7 --steps 300]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import nnx


class MLP(nnx.Module):
    def __init__(self, sizes: list[int], rngs: nnx.Rngs):
        self.layers = [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=False)]

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jnp.tanh(layer(x))
        return self.layers[-1](x)


def loss_of(pred: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(pred, y).mean()


def make_pure(sizes: list[int], tx: optax.GradientTransformation):
    """The reference: parameters as a list of (w, b), a hand-written forward and Adam."""
    keys = jax.random.split(jax.random.key(0), len(sizes) - 1)
    params = [
        (jax.random.normal(k, (a, b)) / jnp.sqrt(a), jnp.zeros((b,)))
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=False)
    ]

    def forward(params, x):
        for w, b in params[:-1]:
            x = jnp.tanh(x @ w + b)
        w, b = params[-1]
        return x @ w + b

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: loss_of(forward(p, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step.__wrapped__, donate_argnums=(0, 1))
    state = {"params": params, "opt": tx.init(params)}

    def run(x, y):
        state["params"], state["opt"], loss = step(state["params"], state["opt"], x, y)
        return loss

    return run


def make_nnx(sizes: list[int], tx: optax.GradientTransformation, donate: bool):
    model = MLP(sizes, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx)

    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: loss_of(m(x), y))(model)
        optimizer.update(grads)
        return loss

    step = nnx.jit(train_step, donate_argnums=(0, 1) if donate else None)
    return lambda x, y: step(model, optimizer, x, y)


def time_pass(run, x, y, steps: int) -> float:
    loss = None
    start = time.perf_counter()
    for _ in range(steps):
        loss = run(x, y)
    jax.block_until_ready(loss)
    return (time.perf_counter() - start) / steps * 1e6


def bench(name: str, sizes: list[int], batch: int, passes: int, steps: int) -> None:
    tx = optax.adam(1e-3)
    x = jax.random.normal(jax.random.key(1), (batch, sizes[0]))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, sizes[-1])
    impls = {
        "pure jax.jit (donated)": make_pure(sizes, tx),
        "nnx.jit": make_nnx(sizes, tx, donate=False),
        "nnx.jit (donate_argnums)": make_nnx(sizes, tx, donate=True),
    }
    try:
        from flax import nnx as flax_nnx  # optional row

        impls["flax.nnx.jit"] = _make_flax(flax_nnx, sizes, tx)
    except ImportError:
        pass
    for run in impls.values():  # compile and warm up
        for _ in range(20):
            run(x, y)
    times: dict[str, list[float]] = {k: [] for k in impls}
    for _ in range(passes):
        for k, run in impls.items():
            times[k].append(time_pass(run, x, y, steps))
    ref = statistics.median(times["pure jax.jit (donated)"])
    print(f"\n{name}: sizes={sizes} batch={batch} ({passes} passes x {steps} steps, median)")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:<26} {med:9.1f} us/step   ratio {med / ref:5.2f}x")


def _make_flax(flax_nnx, sizes, tx):
    class FMLP(flax_nnx.Module):
        def __init__(self, rngs):
            self.layers = flax_nnx.List(
                [flax_nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=False)]
            )

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = jnp.tanh(layer(x))
            return self.layers[-1](x)

    model = FMLP(flax_nnx.Rngs(0))
    optimizer = flax_nnx.Optimizer(model, tx, wrt=flax_nnx.Param)

    @flax_nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = flax_nnx.value_and_grad(lambda m: loss_of(m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    return lambda x, y: step(model, optimizer, x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    bench("(a) 48-layer MLP", [64] * 49, 16, args.passes, args.steps)
    bench("(b) 64-32-10 MLP", [64, 32, 10], 32, args.passes, args.steps)


if __name__ == "__main__":
    main()
