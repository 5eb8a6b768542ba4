"""The batch plan: the work units of one pass over a source, for fit, evaluate and predict.

A pass is a fit epoch, an evaluation or a prediction. Its units are compiled calls: a block of
``fused`` steps (``lax.scan``) or a single step. Array data lives on the device and each step
takes its batch there (a slice, or rows of the epoch's permutation when shuffling); the partial
last batch runs at its true size (fit) or padded to the batch size and masked (evaluate and
predict, so that no new shape is compiled). Iterables of batches are moved to the device ahead
of use (single steps) or stacked into blocks of equal shapes.

``BatchPlan.fused`` is read before each unit, so it can change during a pass (the Trainer's
``steps_per_execution="auto"`` sets it once it has measured the step time).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer import batches as batchlib
from trainer.compiled import Gather, Program
from trainer.data import ArrayData, IterData


@dataclasses.dataclass(frozen=True)
class Unit:
    """One compiled call of a pass.

    Attributes:
      program: the shape of the call (kind, gather, fused steps).
      steps: how many batches it runs.
      args: its arguments after the state: ``(data, perm, n)``, and ``pos`` for predict.
      rows: the real (unpadded) rows of each of its batches (predict cuts the padding).
    """

    program: Program
    steps: int
    args: tuple
    rows: tuple[int, ...] = ()


class BatchPlan:
    """How one pass over ``data`` runs.

    Args:
      data: the source.
      kind: ``"train"``, ``"eval"`` or ``"predict"``.
      batch_size: rows per batch of array data.
      steps: at most this many batches (None: the whole source, or ``len`` of an iterable).
      drop_remainder: fit skips the partial last batch of array data.
      pad: the partial last batch is padded to the batch size and masked (evaluate with a
        per-example loss, predict); else it runs at its true size.
      fused: steps per block.
      with_logs: a batch hook takes per-step logs (they are fetched from the device).
      keys: the names of the parts of dict batches.
      put: places a fed batch, ``put(batch, stacked=False)`` (``Placement.batch``); default
        ``jax.device_put``.
    """

    def __init__(
        self, data: ArrayData | IterData, kind: str, batch_size: int, *, steps: int | None = None,
        drop_remainder: bool = False, pad: bool = False, fused: int = 1, with_logs: bool = False,
        keys: batchlib.BatchKeys | None = None, put: Any = None,
    ):
        self.data, self.kind, self.batch_size = data, kind, batch_size
        self.pad, self.fused, self.with_logs = pad, fused, with_logs
        self.keys = keys or batchlib.BatchKeys()
        self._pad_to = 0  # iterables: the first batch's size
        # places a fed batch (stacked: a block of batches) on the device(s)
        self.put = put or (lambda batch, stacked=False: jax.device_put(batch))
        self._programs: dict[tuple, Program] = {}
        if isinstance(data, ArrayData):
            full, rem = divmod(data.n, batch_size)
            if drop_remainder:
                rem = 0
                if full == 0:
                    raise ValueError(
                        f"drop_remainder=True with batch_size={batch_size} leaves no batch from "
                        f"{data.n} examples."
                    )
            total = full + (1 if rem else 0)
            self.steps: int | None = total if steps is None else min(steps, total)
            # padded and masked: every batch is full-size
            self.full, self.rem = (self.steps, 0) if pad else (min(full, self.steps), rem)
        else:
            self.full, self.rem = 0, 0
            self.steps = steps if steps is not None else data.length

    def first_batch(self) -> Any:
        """The first batch (for shape checks and the summary), without consuming the source."""
        if isinstance(self.data, ArrayData):
            return self.data.first(min(self.batch_size, self.data.n))
        return self.data.peek()

    def program(self, gather: Gather | None, fused: int = 1) -> Program:
        """The (memoized) Program of a call: the compiled-step cache hashes it on every call."""
        key = (gather, fused)
        program = self._programs.get(key)
        if program is None:  # fused blocks return their steps' logs (see Program.with_logs)
            program = self._programs[key] = Program(self.kind, gather, fused, fused > 1)
        return program

    def units(self, start: int = 0, perm: jax.Array | None = None, budget: int | None = None) -> Iterator[Unit]:
        """The units of the pass from batch ``start`` on; at most ``budget`` steps in all.

        ``perm`` is the epoch's permutation of array data (None: in order).
        """
        if isinstance(self.data, ArrayData):
            return self._array_units(start, perm, budget)
        return self._stream_units(start, budget)

    # -- arrays on the device ----------------------------------------------------------
    def _array_units(self, start: int, perm: jax.Array | None, budget: int | None) -> Iterator[Unit]:
        data, bs = self.data, self.batch_size
        source, blocked = data.batch, data.block is not None
        if blocked and data.block != bs:
            raise ValueError(f"The data is laid out in blocks of {data.block} rows, not batch_size={bs}.")
        if perm is not None and _nbytes(source) <= PERMUTE_ONCE_BYTES:
            # one gather per epoch, then every step slices: a gather per step costs more
            source, perm = permuted(source, perm, blocked), None
        ordered = perm is None
        full_gather = Gather(bs, bs, masked=self.pad, ordered=ordered, blocked=blocked)
        tail_gather = Gather(self.rem, bs, ordered=ordered, blocked=blocked) if self.rem else None
        n = jnp.asarray(data.n, jnp.int32) if self.pad else None
        args: tuple = (source, perm, n)
        i = start
        while i < self.steps and (budget is None or budget > 0):
            k = self.fused
            if k > 1 and i + k <= self.full and (budget is None or k <= budget):
                program = self.program(full_gather, k)
            else:
                k = 1
                program = self.program(full_gather if i < self.full else tail_gather)
            if self.kind == "predict":
                rows = tuple(min(bs, data.n - (i + j) * bs) for j in range(k))
                yield Unit(program, k, (*args, jnp.asarray(i, jnp.int32)), rows)
            else:
                yield Unit(program, k, args)
            i += k
            budget = None if budget is None else budget - k

    # -- iterables of batches ---------------------------------------------------------
    def _stream_units(self, start: int, budget: int | None) -> Iterator[Unit]:
        data = self.data
        if self.kind == "train":
            batches: Iterator[Any] = data.epoch(self.steps, skip=start)
        else:
            batches = data.epoch(self.steps)
        prepared = (self._shaped(b) for b in batches)
        queue: collections.deque[tuple[Any, int]] = collections.deque()  # placed, one step ahead
        depth = 2
        while budget is None or budget > 0:
            k = self.fused if budget is None else min(self.fused, budget)
            if k <= 1 or queue:
                # single steps; batches move to the device ``depth`` ahead of use
                while len(queue) < depth:
                    item = next(prepared, None)
                    if item is None:
                        break
                    queue.append((self.put(item[0]), item[1]))
                if not queue:
                    return
                batch, rows = queue.popleft()
                yield self._fed(batch, (rows,))
                budget = None if budget is None else budget - 1
                continue
            group = [item for _, item in zip(range(k), prepared, strict=False)]
            if not group:
                return
            if len(group) == k and len({batchlib.shapes_of(b) for b, _ in group}) == 1:
                stacked = self.put(batchlib.stack([b for b, _ in group]), stacked=True)
                yield self._fed(stacked, tuple(r for _, r in group), fused=k)
                budget = None if budget is None else budget - k
            else:
                for b, r in group:
                    yield self._fed(self.put(b), (r,))
                    budget = None if budget is None else budget - 1

    def _fed(self, batch: Any, rows: tuple[int, ...], fused: int = 1) -> Unit:
        args: tuple = (batch, None, None)
        if self.kind == "predict":
            args += (None,)
        return Unit(self.program(None, fused), len(rows), args, rows)

    def _shaped(self, batch: Any) -> tuple[Any, int]:
        """A batch as its step takes it (padded to the first batch's size when ``pad``), and
        its real number of rows."""
        rows = batchlib.batch_size_of(batch)
        if not self.pad:
            return batch, rows
        self._pad_to = self._pad_to or rows
        size = max(self._pad_to, rows)
        return batchlib.pad_batch(batch, size, self.keys, add_weights=self.kind != "predict"), rows


# Array data up to this size is permuted once per epoch on the device (a second copy while the
# epoch runs) and sliced by each step; larger data is gathered through the permutation per step.
PERMUTE_ONCE_BYTES = 1 << 30


def _nbytes(tree: Any) -> int:
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def permuted(batch: Any, perm: jax.Array, blocked: bool = False) -> Any:
    """Every leaf's rows in the order ``perm`` (one dispatch). ``blocked``: the leaves are
    laid out in blocks (``ArrayData.block``), and so is the result, on the same devices."""
    if not blocked:
        return _permuted_rows(batch, perm)
    shardings = tuple(a.sharding for a in jax.tree.leaves(batch))
    return _permuted_blocks(batch, perm, shardings)


@jax.jit
def _permuted_rows(batch: Any, perm: jax.Array) -> Any:
    return batchlib.gather(batch, perm)


@functools.partial(jax.jit, static_argnums=(2,))
def _permuted_blocks(batch: Any, perm: jax.Array, shardings: tuple) -> Any:
    leaves, treedef = jax.tree.flatten(batch)
    out = []
    for a, sharding in zip(leaves, shardings, strict=True):
        rows = a.reshape(-1, *a.shape[2:])[perm].reshape(a.shape)
        out.append(jax.lax.with_sharding_constraint(rows, sharding))
    return jax.tree.unflatten(treedef, out)


def permutation(key: jax.Array, epoch: int, n: int, rows: int | None = None) -> jax.Array:
    """The epoch's shuffle order of ``n`` rows, on the device: a pure function of ``(key,
    epoch)``, followed by the padding rows ``n .. rows`` in place. It is drawn on the host
    (numpy's PCG64 seeded by the key's data and the epoch): XLA's sort-based shuffle takes
    milliseconds per epoch on a CPU, numpy's a tenth of one."""
    words = np.asarray(jax.random.key_data(key)).ravel().tolist()
    rng = np.random.default_rng(np.random.SeedSequence([*words, int(epoch)]))
    order = rng.permutation(n)
    if rows is not None and rows > n:
        order = np.concatenate([order, np.arange(n, rows)])
    return jax.device_put(order.astype(np.int32))


def steps_of(data: ArrayData | IterData, batch_size: int, steps: int | None) -> int | None:
    """The number of batches of an evaluation or prediction (None when unknown)."""
    if isinstance(data, ArrayData):
        total = math.ceil(data.n / batch_size)
        return total if steps is None else min(steps, total)
    return steps if steps is not None else data.length
