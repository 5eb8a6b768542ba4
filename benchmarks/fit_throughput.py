"""Trainer.fit throughput against hand-written jax.jit loops doing the same work per epoch.

Per epoch every implementation shuffles (a permutation from (seed, epoch)), gathers each batch
on the device from arrays placed there once, and runs Adam on a softmax cross-entropy MLP.

Rows: the reference (one jitted, donated step per batch), ``Trainer.fit(verbose=0)``, a
hand-written ``lax.scan`` loop fusing 32 steps per dispatch, ``Trainer(steps_per_execution=32)``,
and, when the ``bench`` extra is installed (``pip install -e '.[bench]'``), a flax.nnx ``nnx.jit``
loop and keras 3 ``fit`` (JAX backend; keras shuffles and batches numpy arrays on the host, as
its ``fit`` does).

Timed passes alternate between implementations (the order rotates each pass). Each row prints
the median steps/s and step time over passes, and its ratio to its reference: the median over
passes of (row time / reference time in the same pass), which cancels most of the drift of a
machine shared with other work.

Run: ``python benchmarks/fit_throughput.py [--passes 15] [--epochs 2] [--models small,large]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnx
from trainer import Trainer

FUSE = 32
REFERENCE = "reference jax.jit"
SCAN_REFERENCE = f"reference lax.scan x{FUSE}"
Run = Callable[[int], None]


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


def _shuffle(key: jax.Array, epoch: int, n: int) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)


def reference_loop(sizes, x, y, bs: int, fused: int) -> Run:
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
            perm = _shuffle(key, epoch, n)
            c = {**c, "pos": jnp.zeros((), jnp.int32)}
            for _ in range(steps // fused):
                c, loss = step(c, x, y, perm)
            float(jnp.mean(loss))  # one sync per epoch, as fit's epoch logs
        jax.block_until_ready(c)
        state["carry"] = c

    return run


def trainer_loop(sizes, x, y, bs: int, fused: int) -> Run:
    trainer = Trainer(MLP(sizes), optax.adam(1e-3), loss="sparse_categorical_crossentropy", steps_per_execution=fused)

    def run(epochs: int) -> None:
        trainer.fit(x, y, batch_size=bs, epochs=epochs, verbose=0, drop_remainder=True)
        jax.block_until_ready(trainer.model.layers[0].kernel.value)

    return run


def flax_loop(sizes, x, y, bs: int, fused: int) -> Run | None:
    """flax.nnx as its guide writes a train step: ``nnx.jit`` over the model and optimizer,
    called through ``nnx.cached_partial`` (flax's advice for a step called repeatedly); the
    batch is gathered on the device inside the step, as in the reference."""
    if importlib.util.find_spec("flax") is None:
        return None
    from flax import nnx as fnnx

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
    def step(model, opt, x, y, perm, i):
        idx = jax.lax.dynamic_slice(perm, (i * bs,), (bs,))

        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x[idx]), y[idx]).mean()

        loss, grads = fnnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    cached = fnnx.cached_partial(step, model, opt) if hasattr(fnnx, "cached_partial") else None
    n, key = x.shape[0], jax.random.key(0)
    positions = [jnp.asarray(i, jnp.int32) for i in range(n // bs)]

    def run(epochs: int) -> None:
        for epoch in range(epochs):
            perm = _shuffle(key, epoch, n)
            for i in positions:
                loss = cached(x, y, perm, i) if cached is not None else step(model, opt, x, y, perm, i)
            float(loss)
        jax.block_until_ready(model.layers[0].kernel[...])

    return run


def keras_loop(sizes, x, y, bs: int, fused: int) -> Run | None:
    """keras 3 ``fit`` on the JAX backend, on the same data as numpy arrays."""
    if importlib.util.find_spec("keras") is None:
        return None
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "jax"  # read once, at import
    import keras

    if keras.backend.backend() != "jax":
        print(f"  (keras row skipped: keras was imported with the {keras.backend.backend()} backend)")
        return None
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(s, activation="relu") for s in sizes[1:-1]] + [keras.layers.Dense(sizes[-1])]
    model = keras.Sequential([keras.Input((sizes[0],)), *layers])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    xh, yh = np.asarray(x), np.asarray(y)

    def run(epochs: int) -> None:
        model.fit(xh, yh, batch_size=bs, epochs=epochs, verbose=0, shuffle=True)

    return run


def bench(name: str, sizes, bs: int, n: int, epochs: int, passes: int) -> dict[str, float]:
    """Time every row; print and return each row's median steps/s."""
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.normal(size=(n, sizes[0])).astype(np.float32))
    y = jax.device_put(rng.integers(0, sizes[-1], size=n).astype(np.int32))
    steps = (n // bs) * epochs
    factories = {
        REFERENCE: (reference_loop, 1, REFERENCE),
        "Trainer.fit": (trainer_loop, 1, REFERENCE),
        SCAN_REFERENCE: (reference_loop, FUSE, SCAN_REFERENCE),
        f"Trainer.fit spe={FUSE}": (trainer_loop, FUSE, SCAN_REFERENCE),
        "flax.nnx jit": (flax_loop, 1, REFERENCE),
        "keras fit": (keras_loop, 1, REFERENCE),
    }
    rows: dict[str, Run] = {}
    missing = []
    for key, (factory, fused, _) in factories.items():
        run = factory(sizes, x, y, bs, fused)
        if run is None:
            missing.append(key)
        else:
            rows[key] = run
    for run in rows.values():  # warm-up: compile everything
        run(1)
    times: dict[str, list[float]] = {k: [] for k in rows}
    order = list(rows)
    for p in range(passes):
        for key in order[p % len(order):] + order[: p % len(order)]:
            t0 = time.perf_counter()
            rows[key](epochs)
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{name}: MLP {'-'.join(map(str, sizes))}, batch {bs}, {steps} steps per pass, {passes} passes")
    print(f"  {'implementation':<26} {'steps/s':>10} {'us/step':>9}  ratio to its reference")
    for key, t in med.items():
        base = factories[key][2]
        ratio = statistics.median(a / b for a, b in zip(times[key], times[base], strict=True))
        print(f"  {key:<26} {steps / t:>10.0f} {1e6 * t / steps:>9.1f}  {ratio:.3f}x ({base})")
    if "keras fit" in times:
        speedup = statistics.median(a / b for a, b in zip(times["keras fit"], times["Trainer.fit"], strict=True))
        print(f"  Trainer.fit is {speedup:.2f}x as fast as keras fit")
    for key in missing:
        print(f"  {key:<26} not installed (pip install -e '.[bench]')")
    return {k: steps / t for k, t in med.items()}


MODELS = {
    "small": ((64, 32, 10), 32, 32 * 256),
    "large": ((784, 512, 512, 10), 128, 128 * 64),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default="small,large", help="comma-separated: small, large")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    for model in args.models.split(","):
        sizes, bs, n = MODELS[model]
        bench(model, sizes, bs, n, args.epochs, args.passes)


if __name__ == "__main__":
    main()
