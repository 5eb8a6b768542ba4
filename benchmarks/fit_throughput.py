"""Trainer.fit throughput against hand-written jax.jit loops doing the same work per epoch.

Per epoch every implementation shuffles (a permutation from (seed, epoch)), gathers each batch
on the device from arrays placed there once, and runs Adam on a softmax cross-entropy MLP.

Rows: the reference (one jitted, donated step per batch), ``Trainer.fit(verbose=0)``, a
hand-written ``lax.scan`` loop fusing 32 steps per dispatch, ``Trainer(steps_per_execution=32)``,
and flax.nnx / keras ``fit`` when those are installed. Timed passes alternate between
implementations; medians are reported.

Run: ``python benchmarks/fit_throughput.py [--passes 7] [--epochs 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnx
from trainer import Trainer

FUSE = 32


class MLP(nnx.Module):
    def __init__(self, sizes: tuple[int, ...], seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.layers = [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def _apply(params: list, x: jax.Array) -> jax.Array:
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
    return x @ params[-1]["kernel"] + params[-1]["bias"]


def _loss(params: list, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(_apply(params, x), y).mean()


def reference_loop(sizes, x, y, bs: int, fused: int) -> Callable[[int], None]:
    """A pure jax.jit Adam loop with donation; ``fused`` > 1 scans that many steps per call."""
    tx = optax.adam(1e-3)
    model = MLP(sizes)
    params = [nnx.state(layer, nnx.Param).to_pure_dict() for layer in model.layers]
    carry = {"params": params, "opt": tx.init(params), "pos": jnp.zeros((), jnp.int32)}
    n = x.shape[0]
    steps = n // bs

    def one(carry, x, y, perm):
        idx = jax.lax.dynamic_slice(perm, (carry["pos"] * bs,), (bs,))
        loss, grads = jax.value_and_grad(_loss)(carry["params"], x[idx], y[idx])
        updates, opt = tx.update(grads, carry["opt"], carry["params"])
        return {"params": optax.apply_updates(carry["params"], updates), "opt": opt, "pos": carry["pos"] + 1}, loss

    if fused > 1:
        def step(carry, x, y, perm):
            return jax.lax.scan(lambda c, _: one(c, x, y, perm), carry, None, length=fused)
    else:
        step = one
    step = jax.jit(step, donate_argnums=(0,))
    key = jax.random.key(0)
    state = {"carry": carry}

    def run(epochs: int) -> None:
        c = state["carry"]
        for epoch in range(epochs):
            perm = jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)
            c = {**c, "pos": jnp.zeros((), jnp.int32)}
            for _ in range(steps // fused):
                c, loss = step(c, x, y, perm)
            float(jnp.mean(loss))  # one sync per epoch, as fit's epoch logs
        jax.block_until_ready(c)
        state["carry"] = c

    return run


def trainer_loop(sizes, x, y, bs: int, fused: int) -> Callable[[int], None]:
    trainer = Trainer(MLP(sizes), optax.adam(1e-3), loss="sparse_categorical_crossentropy", steps_per_execution=fused)

    def run(epochs: int) -> None:
        trainer.fit(x, y, batch_size=bs, epochs=epochs, verbose=0, drop_remainder=True)
        jax.block_until_ready(trainer.model.layers[0].kernel.value)

    return run


def flax_loop(sizes, x, y, bs: int, fused: int) -> Callable[[int], None] | None:
    try:
        from flax import nnx as fnnx
    except ImportError:
        return None

    class FMLP(fnnx.Module):
        def __init__(self, rngs):
            self.layers = fnnx.List([fnnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = jax.nn.relu(layer(x))
            return self.layers[-1](x)

    model = FMLP(fnnx.Rngs(0))
    opt = fnnx.Optimizer(model, optax.adam(1e-3), wrt=fnnx.Param)

    @fnnx.jit
    def step(model, opt, xb, yb):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

        loss, grads = fnnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    n, key = x.shape[0], jax.random.key(0)

    def run(epochs: int) -> None:
        for epoch in range(epochs):
            perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
            for i in range(n // bs):
                idx = perm[i * bs : (i + 1) * bs]
                loss = step(model, opt, x[idx], y[idx])
            float(loss)

    return run


def keras_loop(sizes, x, y, bs: int, fused: int) -> Callable[[int], None] | None:
    try:
        import os

        os.environ.setdefault("KERAS_BACKEND", "jax")
        import keras
    except ImportError:
        return None
    layers = [keras.layers.Dense(s, activation="relu") for s in sizes[1:-1]] + [keras.layers.Dense(sizes[-1])]
    model = keras.Sequential([keras.Input((sizes[0],)), *layers])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    xh, yh = np.asarray(x), np.asarray(y)

    def run(epochs: int) -> None:
        model.fit(xh, yh, batch_size=bs, epochs=epochs, verbose=0, shuffle=True)

    return run


def bench(name: str, sizes, bs: int, n: int, epochs: int, passes: int) -> None:
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.normal(size=(n, sizes[0])).astype(np.float32))
    y = jax.device_put(rng.integers(0, sizes[-1], size=n).astype(np.int32))
    steps = (n // bs) * epochs
    rows = {
        "reference jax.jit": reference_loop(sizes, x, y, bs, 1),
        "Trainer.fit": trainer_loop(sizes, x, y, bs, 1),
        f"reference lax.scan x{FUSE}": reference_loop(sizes, x, y, bs, FUSE),
        f"Trainer.fit spe={FUSE}": trainer_loop(sizes, x, y, bs, FUSE),
        "flax.nnx jit": flax_loop(sizes, x, y, bs, 1),
        "keras fit": keras_loop(sizes, x, y, bs, 1),
    }
    rows = {k: v for k, v in rows.items() if v is not None}
    for run in rows.values():  # warm-up: compile everything
        run(1)
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(passes):
        for key, run in rows.items():
            t0 = time.perf_counter()
            run(epochs)
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{name}: MLP {'-'.join(map(str, sizes))}, batch {bs}, {steps} steps per pass, {passes} passes")
    print(f"  {'implementation':<26} {'steps/s':>10} {'us/step':>9}  ratio")
    for key, t in med.items():
        base = med[f"reference lax.scan x{FUSE}"] if "spe" in key or "scan" in key else med["reference jax.jit"]
        print(f"  {key:<26} {steps / t:>10.0f} {1e6 * t / steps:>9.1f}  {t / base:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    bench("small", (64, 32, 10), 32, 32 * 256, args.epochs, args.passes)
    bench("large", (784, 512, 512, 10), 128, 128 * 64, args.epochs, args.passes)


if __name__ == "__main__":
    main()
