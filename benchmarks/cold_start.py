"""Cold start: a fresh Python process importing the libraries, building a small model and calling
it once, against ``import jax`` plus one op.

Modes, each run in its own fresh subprocess (timed inside it from its first statement):
(jax) ``import jax`` + ``jnp.ones(3).sum()``; (nnx) ``import nnx`` + building
``nnx.Sequential(nnx.Linear(64, 32), nnx.relu, nnx.Linear(32, 10))`` + one forward call on a
``(1, 64)`` batch; (all) the same with ``import nnx, trainer, callbacks``. Repetitions alternate
the modes; medians are printed per phase (import jax / import nnx / import trainer+callbacks /
build / forward) with each total's ratio to the jax mode.

``--compilation-cache DIR`` turns on JAX's persistent compilation cache in the children (with
no minimum compile time or entry size, so that the small programs of a cold start are kept);
one unmeasured run fills it first. It is an opt-in of the user's program, never set by nnx.
Run: ``python benchmarks/cold_start.py [--repeats 7] [--compilation-cache /tmp/jax-cache]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import time
t0 = time.perf_counter()
import json, sys
mode, cache = sys.argv[1], sys.argv[2]
import jax
if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
import jax.numpy as jnp
t_jax = time.perf_counter()
times = {"import jax": t_jax - t0}
if mode == "jax":
    jnp.ones(3).sum().block_until_ready()
    times["one op"] = time.perf_counter() - t_jax
else:
    import nnx
    t_nnx = time.perf_counter()
    times["import nnx"] = t_nnx - t_jax
    if mode == "all":
        import trainer, callbacks
    t_imports = time.perf_counter()
    times["import trainer+callbacks"] = t_imports - t_nnx
    model = nnx.Sequential(
        nnx.Linear(64, 32, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(32, 10, rngs=nnx.Rngs(1))
    )
    t_build = time.perf_counter()
    times["build"] = t_build - t_imports
    model(jnp.ones((1, 64))).block_until_ready()
    times["forward"] = time.perf_counter() - t_build
times["total"] = time.perf_counter() - t0
print(json.dumps(times))
"""

MODES = ("jax", "nnx", "all")
PHASES = ("import jax", "one op", "import nnx", "import trainer+callbacks", "build", "forward")


def run_child(mode: str, cache: str) -> dict[str, float]:
    """One fresh process of ``mode``; its phase times in seconds."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the default compiler
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, cache], cwd=ROOT, env=env, capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the {mode!r} child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7,
                        help="processes per mode (median reported)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: jax, nnx, all")
    parser.add_argument("--compilation-cache", default="", metavar="DIR",
                        help="use JAX's persistent compilation cache in DIR (filled first)")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if "jax" not in modes:
        modes.insert(0, "jax")
    if args.compilation_cache:
        for mode in modes:
            run_child(mode, args.compilation_cache)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for mode in modes:
            runs[mode].append(run_child(mode, args.compilation_cache))

    def median(mode: str, phase: str) -> float | None:
        values = [r[phase] for r in runs[mode] if phase in r]
        return statistics.median(values) if values else None

    cache = f", compilation cache {args.compilation_cache}" if args.compilation_cache else ""
    print(f"cold start, median of {args.repeats} processes per mode (seconds{cache})")
    print(f"{'phase':<26}" + "".join(f"{m:>9}" for m in modes))
    for phase in (*PHASES, "total"):
        cells = [median(m, phase) for m in modes]
        if all(c is None for c in cells):
            continue
        print(f"{phase:<26}" + "".join("        -" if c is None else f"{c:9.3f}" for c in cells))
    base = median("jax", "total")
    for mode in modes[1:]:
        print(f"ratio {mode}/jax: {median(mode, 'total') / base:.2f}x (target <= 1.8x)")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("note: PYTHONDONTWRITEBYTECODE is set; modules without a __pycache__ are compiled "
              "from source in every process")


if __name__ == "__main__":
    main()
