"""Trainer.fit throughput against hand-written jax.jit loops doing the same work per epoch.

Every implementation runs Adam on a softmax cross-entropy MLP over arrays placed on the device
once. Rows, each with the reference it is compared with:

- ``reference jax.jit slice``: one jitted, donated step per batch, slicing the batch at its
  position; ``Trainer.fit shuffle=False`` (``steps_per_execution=1``) against it.
- ``reference jax.jit gather``: the same, gathering each batch through the epoch's permutation
  (a pure function of ``(seed, epoch)``); ``Trainer.fit`` (shuffled, ``steps_per_execution=1``).
- ``reference lax.scan x32``: one call scans 32 steps over 32 pre-sliced batches;
  ``Trainer.fit spe=32`` (``shuffle=False``).
- ``... no-skip``: the Trainer row above it with ``skip_nonfinite=False``: without the
  per-step check of the gradients (a step with NaN/inf gradients is then applied).
- ``reference ... apply_if_finite``: the slicing and scanning loops with Adam wrapped in
  ``optax.apply_if_finite``, which skips non-finite updates as the Trainer does by default
  (each Trainer row is also compared with its guarded loop, on a line of its own).
- ``Trainer(model, adam).fit``: ``Trainer(model, optax.adam(1e-3)).fit(x, y)`` with every
  default (loss inferred, shuffling, ``steps_per_execution="auto"``) against the gather loop.
- with the ``bench`` extra (``pip install -e '.[bench]'``): a flax.nnx ``nnx.jit`` loop and keras 3
  ``fit`` (JAX backend; keras shuffles and batches numpy arrays on the host, as its ``fit`` does).

Timed passes alternate between implementations (the order rotates each pass). Each row prints
the median steps/s and step time over passes, and its ratio to its reference: the median over
passes of (row time / reference time in the same pass), which cancels most of the drift of a
machine shared with other work.

Models: ``small`` 64-32-10 at batch 32, ``deep`` 48 layers of width 64 at batch 16, ``large``
784-512-512-10 at batch 128.

Run: ``python benchmarks/fit_throughput.py [--passes 15] [--epochs 2] [--models small,deep,large]``.
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
REFERENCE = "reference jax.jit gather"
SLICE_REFERENCE = "reference jax.jit slice"
SCAN_REFERENCE = f"reference lax.scan x{FUSE}"
GUARDED_SLICE = "reference slice apply_if_finite"
GUARDED_SCAN = "reference scan apply_if_finite"
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


def reference_loop(sizes, x, y, bs: int, fused: int, shuffle: bool = True, guarded: bool = False) -> Run:
    """A pure jax.jit Adam loop with donation on arrays placed on the device once.

    ``shuffle``: each step gathers its batch through the epoch's permutation; else it slices
    the batch at its position. ``fused`` > 1 scans that many steps per call over pre-sliced
    batches (the data stacked as ``(steps, bs, ...)`` once, each call taking one slab).
    ``guarded``: Adam wrapped in ``optax.apply_if_finite`` (non-finite updates skipped).
    """
    tx = optax.adam(1e-3)
    if guarded:
        tx = optax.apply_if_finite(tx, max_consecutive_errors=10)
    model = MLP(sizes)
    params = [nnx.state(layer, nnx.Param).to_pure_dict() for layer in model.layers]
    carry = {"params": params, "opt": tx.init(params), "pos": jnp.zeros((), jnp.int32)}
    n = x.shape[0]
    steps = n // bs

    def update(carry, xb, yb):
        loss, grads = jax.value_and_grad(_loss)(carry["params"], xb, yb)
        updates, opt = tx.update(grads, carry["opt"], carry["params"])
        return {"params": optax.apply_updates(carry["params"], updates), "opt": opt, "pos": carry["pos"] + 1}, loss

    if fused > 1:
        blocks = steps // fused
        xs = x[: blocks * fused * bs].reshape(blocks, fused, bs, *x.shape[1:])
        ys = y[: blocks * fused * bs].reshape(blocks, fused, bs, *y.shape[1:])

        def step(carry, xs, ys):
            return jax.lax.scan(lambda c, b: update(c, *b), carry, (xs, ys))

        step = jax.jit(step, donate_argnums=(0,))

        def epoch_calls(c, perm):
            for b in range(blocks):
                c, loss = step(c, xs[b], ys[b])
            return c, loss
    else:
        def one(carry, x, y, perm):
            start = carry["pos"] * bs
            if shuffle:
                idx = jax.lax.dynamic_slice(perm, (start,), (bs,))
                return update(carry, x[idx], y[idx])
            return update(carry, jax.lax.dynamic_slice_in_dim(x, start, bs), jax.lax.dynamic_slice_in_dim(y, start, bs))

        step = jax.jit(one, donate_argnums=(0,))

        def epoch_calls(c, perm):
            for _ in range(steps):
                c, loss = step(c, x, y, perm)
            return c, loss

    if fused > 1:  # the slabs are sliced once, outside the timed loop
        xs, ys = [jax.block_until_ready(jnp.asarray(a)) for a in (xs, ys)]
        xs, ys = list(xs), list(ys)
    key = jax.random.key(0)
    state = {"carry": carry}

    def run(epochs: int) -> None:
        c = state["carry"]
        for epoch in range(epochs):
            perm = _shuffle(key, epoch, n) if shuffle and fused == 1 else None
            c = {**c, "pos": jnp.zeros((), jnp.int32)}
            c, loss = epoch_calls(c, perm)
            float(jnp.mean(loss))  # one sync per epoch, as fit's epoch logs
        jax.block_until_ready(c)
        state["carry"] = c

    return run


def trainer_loop(sizes, x, y, bs: int, fused: int | str, shuffle: bool = True, skip_nonfinite: bool = True) -> Run:
    trainer = Trainer(
        MLP(sizes), optax.adam(1e-3), loss="sparse_categorical_crossentropy", steps_per_execution=fused,
        skip_nonfinite=skip_nonfinite,
    )

    def run(epochs: int) -> None:
        trainer.fit(x, y, batch_size=bs, epochs=epochs, verbose=0, drop_remainder=True, shuffle=shuffle)
        jax.block_until_ready(trainer.model.layers[0].kernel.value)

    return run


def guarded_reference_loop(sizes, x, y, bs: int, fused: int, shuffle: bool = True) -> Run:
    """The reference loop with ``optax.apply_if_finite``: a hand-written loop that skips
    non-finite steps, as the Trainer does by default."""
    return reference_loop(sizes, x, y, bs, fused, shuffle, guarded=True)


def unguarded_trainer_loop(sizes, x, y, bs: int, fused: int, shuffle: bool = True) -> Run:
    """``Trainer.fit`` with ``skip_nonfinite=False``: what the per-step non-finite check costs."""
    return trainer_loop(sizes, x, y, bs, fused, shuffle, skip_nonfinite=False)


def default_trainer_loop(sizes, x, y, bs: int, fused: int, shuffle: bool = True) -> Run:
    """What a user writes who writes no train step: ``Trainer(model, optax.adam(1e-3)).fit(x, y)``
    (the loss inferred, ``steps_per_execution="auto"``, shuffling); silent, for the timing."""
    trainer = Trainer(MLP(sizes), optax.adam(1e-3))

    def run(epochs: int) -> None:
        trainer.fit(x, y, batch_size=bs, epochs=epochs, verbose=0)
        jax.block_until_ready(trainer.model.layers[0].kernel.value)

    return run


def flax_loop(sizes, x, y, bs: int, fused: int, shuffle: bool = True) -> Run | None:
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


def keras_loop(sizes, x, y, bs: int, fused: int, shuffle: bool = True) -> Run | None:
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


def _describe(sizes: tuple[int, ...]) -> str:
    """``64-32-10``, or ``48 layers of 64, 10 outputs`` for a long run of one width."""
    if len(sizes) > 6 and len(set(sizes[:-1])) == 1:
        return f"{len(sizes) - 1} layers of {sizes[0]}, {sizes[-1]} outputs"
    return "-".join(map(str, sizes))


def bench(name: str, sizes, bs: int, n: int, epochs: int, passes: int) -> dict[str, float]:
    """Time every row; print and return each row's median steps/s."""
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.normal(size=(n, sizes[0])).astype(np.float32))
    y = jax.device_put(rng.integers(0, sizes[-1], size=n).astype(np.int32))
    steps = (n // bs) * epochs
    factories = {  # name: (factory, fused, shuffle, the reference it is compared with)
        SLICE_REFERENCE: (reference_loop, 1, False, SLICE_REFERENCE),
        "Trainer.fit shuffle=False": (trainer_loop, 1, False, SLICE_REFERENCE),
        "Trainer.fit shuffle=False no-skip": (unguarded_trainer_loop, 1, False, SLICE_REFERENCE),
        GUARDED_SLICE: (guarded_reference_loop, 1, False, SLICE_REFERENCE),
        REFERENCE: (reference_loop, 1, True, REFERENCE),
        "Trainer.fit": (trainer_loop, 1, True, REFERENCE),
        SCAN_REFERENCE: (reference_loop, FUSE, False, SCAN_REFERENCE),
        f"Trainer.fit spe={FUSE}": (trainer_loop, FUSE, False, SCAN_REFERENCE),
        f"Trainer.fit spe={FUSE} no-skip": (unguarded_trainer_loop, FUSE, False, SCAN_REFERENCE),
        GUARDED_SCAN: (guarded_reference_loop, FUSE, False, SCAN_REFERENCE),
        "Trainer(model, adam).fit": (default_trainer_loop, 1, True, REFERENCE),
        "flax.nnx jit": (flax_loop, 1, True, REFERENCE),
        "keras fit": (keras_loop, 1, True, REFERENCE),
    }
    rows: dict[str, Run] = {}
    missing = []
    for key, (factory, fused, shuffle, _) in factories.items():
        run = factory(sizes, x, y, bs, fused, shuffle)
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
    print(f"\n{name}: MLP {_describe(sizes)}, batch {bs}, {steps} steps per pass, {passes} passes")
    print(f"  {'implementation':<34} {'steps/s':>10} {'us/step':>9}  ratio to its reference")
    for key, t in med.items():
        base = factories[key][3]
        ratio = statistics.median(a / b for a, b in zip(times[key], times[base], strict=True))
        print(f"  {key:<34} {steps / t:>10.0f} {1e6 * t / steps:>9.1f}  {ratio:.3f}x ({base})")
    for row, guarded in (("Trainer.fit shuffle=False", GUARDED_SLICE), (f"Trainer.fit spe={FUSE}", GUARDED_SCAN)):
        ratio = statistics.median(a / b for a, b in zip(times[row], times[guarded], strict=True))
        print(f"  {row} takes {ratio:.3f}x the time of the {guarded} loop (both skip non-finite steps)")
    default = "Trainer(model, adam).fit"
    if default in times:  # against the cheaper loop too, which does not shuffle
        ratio = statistics.median(a / b for a, b in zip(times[default], times[SLICE_REFERENCE], strict=True))
        print(f"  {default} takes {ratio:.3f}x the time of the {SLICE_REFERENCE} loop")
    if "keras fit" in times:
        speedup = statistics.median(a / b for a, b in zip(times["keras fit"], times["Trainer.fit"], strict=True))
        print(f"  Trainer.fit is {speedup:.2f}x as fast as keras fit")
    for key in missing:
        print(f"  {key:<34} not installed (pip install -e '.[bench]')")
    return {k: steps / t for k, t in med.items()}


MODELS = {
    "small": ((64, 32, 10), 32, 32 * 256),
    "deep": ((64,) * 48 + (10,), 16, 16 * 128),  # 48 layers of width 64
    "large": ((784, 512, 512, 10), 128, 128 * 64),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default="small,deep,large", help="comma-separated: small, deep, large")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    for model in args.models.split(","):
        sizes, bs, n = MODELS[model]
        bench(model, sizes, bs, n, args.epochs, args.passes)


if __name__ == "__main__":
    main()
