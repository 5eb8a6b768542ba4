"""Flax NNX's own test suite run against this project's ``nnx`` (``make compat``).

1. Downloads the flax source distribution from PyPI into ``.cache/compat`` (once) and unpacks its
   ``tests/nnx``.
2. Reference run, once per flax version: the tests unchanged, against flax itself. The tests
   that pass there are the ones counted.
3. Our run: a copy whose ``flax.nnx`` imports are rewritten to ``nnx`` (``flax.linen``,
   ``flax.errors`` and ``flax.typing`` stay real flax; the error classes in ``ERROR_NAMES`` map
   to ours), with ``compat/conftest.py`` beside them (exclusions, placeholders for missing
   names, per-test results).
4. Prints a per-file table and, last, ``N/M flax tests pass (X%)``; writes the results to
   ``compat/results.csv`` and every excluded test, with its reason, to ``compat/excluded.txt``.

Usage: ``python compat/flax_tests.py [-n JOBS] [--rerun-reference] [FILE ...]`` where FILE
names test files of Flax's ``tests/nnx`` (e.g. ``transforms_test.py nn/linear_test.py``).
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

FLAX_VERSION = "0.12.8"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = ROOT / ".cache" / "compat"

# flax.errors classes whose behaviour our nnx has under its own name.
ERROR_NAMES = {"TraceContextError": "nnx.TraceContextError"}
# Flax's global configuration of the nnx modes, and our equivalents.
CONFIG_NAMES = {
    "nnx_graph_mode": "nnx.set_graph_mode",
    "nnx_graph_updates": "nnx.set_graph_updates",
}


# -- the tests -----------------------------------------------------------------------------


def _sdist() -> Path:
    archive = CACHE / f"flax-{FLAX_VERSION}.tar.gz"
    if not archive.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"flax=={FLAX_VERSION}", "-d", str(CACHE), "--quiet"],
            check=True,
        )
    return archive


def _pristine_tests() -> Path:
    target = CACHE / f"flax-{FLAX_VERSION}-tests-nnx"
    if not target.exists():
        prefix = f"flax-{FLAX_VERSION}/tests/nnx/"
        tmp = target.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(_sdist()) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith(prefix):
                    out = tmp / member.name[len(prefix):]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tar.extractfile(member).read())
        tmp.rename(target)
    return target


_FROM_FLAX = re.compile(r"^(\s*)from flax import ([^\n(]+)$", re.M)


def rewrite(source: str) -> str:
    """Flax's test source with ``flax.nnx`` imports and names pointing at our ``nnx``."""

    def split_from_flax(m: re.Match) -> str:
        indent, names = m.group(1), [n.strip() for n in m.group(2).split(",")]
        lines = []
        rest = []
        for name in names:
            if name == "nnx":
                lines.append(f"{indent}import nnx")
            elif name.startswith("nnx as "):
                lines.append(f"{indent}import nnx as {name[len('nnx as '):]}")
            else:
                rest.append(name)
        if rest:
            lines.append(f"{indent}from flax import {', '.join(rest)}")
        return "\n".join(lines)

    source = _FROM_FLAX.sub(split_from_flax, source)
    source = re.sub(r"^(\s*)import flax\.nnx as (\w+)$", r"\1import nnx as \2", source, flags=re.M)
    source = re.sub(r"\bfrom flax\.nnx\b", "from nnx", source)
    source = re.sub(r"\bflax\.nnx\.", "nnx.", source)
    for name, ours in ERROR_NAMES.items():
        source = re.sub(rf"\b(?:flax\.)?errors\.{name}\b", ours, source)
    for name, ours in CONFIG_NAMES.items():
        source = re.sub(rf"flax\.config\.update\(\s*['\"]{name}['\"]\s*,", f"{ours}(", source)
        source = re.sub(rf"flax\.config\._read\(\s*['\"]{name}['\"]\s*\)", f"{ours}.current_value()", source)
    return source


def _prepare(mode: str) -> Path:
    """A fresh copy of the tests for ``mode`` ('reference' or 'ours'), private to this process
    (several runs may go on at once)."""
    scratch = CACHE / f"run-{mode}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(_pristine_tests(), scratch)
    if mode == "ours":
        for path in scratch.rglob("*.py"):
            path.write_text(rewrite(path.read_text()))
    shutil.copy(HERE / "conftest.py", scratch / "conftest.py")
    (scratch / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    return scratch


def _run(mode: str, files: list[str], jobs: int) -> Path:
    scratch = _prepare(mode)
    results = CACHE / (f"results-{mode}.csv" if mode == "reference" else f"results-{mode}-{os.getpid()}.csv")
    parts = CACHE / f"results-{mode}-{os.getpid()}.parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    env = dict(
        os.environ, NNX_COMPAT_MODE=mode, NNX_COMPAT_ROOT=str(scratch),
        NNX_COMPAT_RESULTS=str(parts / "results"), JAX_PLATFORMS="cpu",
    )
    targets = [str(scratch / f) for f in files] or [str(scratch)]
    command = [
        sys.executable, "-m", "pytest", *targets, "-q", "--import-mode=importlib",
        "--timeout=600", "-rN",
    ]
    if jobs > 1:
        command += ["-n", str(jobs)]
    print(f"[{mode}] {' '.join(command[2:4])} ... ({'flax ' + FLAX_VERSION if mode == 'reference' else 'this nnx'})",
          flush=True)
    log = CACHE / f"pytest-{mode}-{os.getpid()}.log"
    with open(log, "w") as out:
        subprocess.run(command, cwd=scratch, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    rows: dict[str, list[str]] = {}
    for part in sorted(parts.glob("results*")):
        with open(part, newline="") as f:
            for row in list(csv.reader(f))[1:]:
                if row[0] not in rows or rows[row[0]][2] == "excluded":
                    rows[row[0]] = row
    with open(results, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["test", "file", "outcome", "detail"])
        writer.writerows(sorted(rows.values()))
    shutil.rmtree(parts, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return results


def _read(path: Path) -> dict[str, tuple[str, str, str]]:
    with open(path, newline="") as f:
        return {row[0]: (row[1], row[2], row[3]) for row in list(csv.reader(f))[1:]}


# -- the report ------------------------------------------------------------------------------


def report(reference: dict, ours: dict, files: list[str]) -> tuple[int, int]:
    """Print the per-file table; write compat/results.csv and compat/excluded.txt."""

    def selected(rel: str) -> bool:
        return not files or any(rel == f or rel.startswith(f.rstrip("/") + "/") for f in files)

    counted = {t: v for t, v in reference.items() if v[1] == "passed" and selected(v[0])}
    excluded = {t: v for t, v in reference.items() if v[1] == "excluded" and selected(v[0])}
    per_file: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for test, (rel, _, _) in counted.items():
        per_file[rel][1] += 1
        if ours.get(test, ("", "missing", ""))[1] == "passed":
            per_file[rel][0] += 1
    for _, (rel, _, _) in excluded.items():
        per_file[rel][2] += 1
    print(f"\n{'file':<34} {'pass':>6} {'of':>6} {'%':>6} {'excluded':>9}")
    for rel in sorted(per_file):
        passed, total, n_excluded = per_file[rel]
        pct = f"{100 * passed / total:5.1f}" if total else "    -"
        print(f"{rel:<34} {passed:>6} {total:>6} {pct:>6} {n_excluded:>9}")
    reasons = collections.Counter(v[2] for v in excluded.values())
    print("\nexcluded (not counted):")
    for reason, n in reasons.most_common():
        print(f"  {n:5d}  {reason}")
    not_on_flax = sum(1 for v in reference.values() if v[1] not in ("passed", "excluded") and selected(v[0]))
    print(f"  {not_on_flax:5d}  do not pass on flax {FLAX_VERSION} itself on this machine")
    if not files:
        with open(HERE / "results.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["test", "file", "outcome", "detail"])
            for test in sorted(counted):
                rel, outcome, detail = ours.get(test, (counted[test][0], "missing", ""))
                writer.writerow([test, rel, outcome, detail])
        with open(HERE / "excluded.txt", "w") as f:
            f.write(f"# Flax {FLAX_VERSION} tests/nnx tests not counted by make compat, with the reason.\n")
            for test in sorted(excluded):
                f.write(f"{test}\t{excluded[test][2]}\n")
    if files:  # a few files: say what fails, and why
        failing = [(t, ours.get(t, ("", "missing", ""))) for t in sorted(counted)]
        failing = [(t, o) for t, o in failing if o[1] != "passed"]
        if failing:
            print("\nnot passing:")
            for test, (_, outcome, detail) in failing:
                print(f"  {test}  [{outcome}] {detail[:160]}")
    passed = sum(p for p, _, _ in per_file.values())
    total = sum(t for _, t, _ in per_file.values())
    return passed, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="test files of Flax's tests/nnx (default: all)")
    parser.add_argument("-n", "--jobs", type=int, default=2, help="pytest-xdist workers")
    parser.add_argument("--rerun-reference", action="store_true",
                        help="run the tests against flax itself again")
    args = parser.parse_args()
    reference_path = CACHE / "results-reference.csv"
    if args.rerun_reference or not reference_path.exists():
        _run("reference", [], args.jobs)
    ours_path = _run("ours", args.files, args.jobs)
    passed, total = report(_read(reference_path), _read(ours_path), args.files)
    if not args.files:
        shutil.copy(ours_path, CACHE / "results-ours.csv")
    ours_path.unlink()
    print(f"(pytest output: {CACHE / f'pytest-ours-{os.getpid()}.log'})")
    pct = 100 * passed / total if total else 0.0
    print(f"\n{passed}/{total} flax tests pass ({pct:.1f}%)")


if __name__ == "__main__":
    main()
