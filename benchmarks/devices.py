"""Trainer.fit step time on one device and on a data mesh over several devices.

Each configuration runs in a fresh process. On a CPU machine the devices are faked with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` and share the same cores, so the figure
is a sanity check of the sharded path (its overhead), not a speedup; on a machine with several
accelerators the same command measures the real thing (``--fake 0`` uses the real devices).

Run: ``python benchmarks/devices.py [--devices 1,4] [--epochs 3] [--fake 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import jax, numpy as np, optax
import nnx
from trainer import Trainer

class MLP(nnx.Module):
    def __init__(self, sizes, rngs):
        self.layers = [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)

epochs, mesh = int(sys.argv[1]), (None if sys.argv[2] == "none" else "auto")
sizes, bs, n = (784, 512, 512, 10), 128, 128 * 32
rng = np.random.default_rng(0)
x = rng.normal(size=(n, sizes[0])).astype(np.float32)
y = rng.integers(0, sizes[-1], size=n).astype(np.int32)
trainer = Trainer(MLP(sizes, nnx.Rngs(0)), optax.adam(1e-3), mesh=mesh, steps_per_execution=1)
trainer.fit(x, y, batch_size=bs, epochs=1, verbose=0)  # compile
start = time.perf_counter()
trainer.fit(x, y, batch_size=bs, epochs=epochs, verbose=0)
jax.block_until_ready(trainer.model.layers[0].kernel.value)
steps = epochs * (n // bs)
print(json.dumps({"devices": len(jax.devices()), "platform": jax.devices()[0].platform,
                  "us_per_step": 1e6 * (time.perf_counter() - start) / steps}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,4", help="comma-separated device counts")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fake", type=int, default=1, help="1: fake CPU devices; 0: the real ones")
    args = parser.parse_args()
    print("MLP 784-512-512-10, batch 128 (the global batch), Trainer.fit, steps_per_execution=1")
    for count in (int(c) for c in args.devices.split(",")):
        env = dict(os.environ)
        if args.fake:
            env["JAX_PLATFORMS"] = "cpu"
            env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
        mesh = "none" if count == 1 else "auto"
        done = subprocess.run([sys.executable, "-c", CHILD, str(args.epochs), mesh], env=env,
                              capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"  {count} devices: failed\n{done.stderr[-2000:]}")
            continue
        out = json.loads(done.stdout.strip().splitlines()[-1])
        label = "one device" if count == 1 else f"data mesh over {out['devices']} devices"
        print(f"  {label:<28} {out['platform']}  {out['us_per_step']:>9.1f} us/step")


if __name__ == "__main__":
    main()
