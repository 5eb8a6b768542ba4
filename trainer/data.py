"""Input data for the Trainer: arrays kept on the device, or iterables of batches.

Batches are in the format of ``batches.py``. Arrays are placed on the device once (``ArrayData``) and
the compiled steps gather each batch there from a permutation; any other source (a list of
batches, a generator, grain ``MapDataset`` / ``IterDataset`` / ``DataLoader``) is an
``IterData`` whose batches move to the device one step ahead of use.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer.batches import (
    BatchKeys,
    as_array,
    batch_parts,
    class_weights,
    is_array,
    normalize_batch,
    with_weights,
)


def _all_arrays(tree: Any) -> bool:
    if not isinstance(tree, list | tuple | dict) and not is_array(tree):
        return False  # a generator, a dataset: not a pytree of arrays (and jax would warn)
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and all(is_array(v) for v in leaves)


def _num_examples(tree: Any) -> int:
    return int(jax.tree.leaves(tree)[0].shape[0])


def _check_lengths(parts: dict[str, Any]) -> int:
    sizes: dict[str, int] = {}
    for name, tree in parts.items():
        if tree is None:
            continue
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            where = f"{name}{jax.tree_util.keystr(path)}"
            if np.ndim(leaf) == 0:
                raise ValueError(f"{where} is a scalar; expected an array with a batch axis.")
            kind = np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype)).kind
            if kind in "OUSV":
                what = "strings" if kind in "US" else "Python objects"
                raise TypeError(
                    f"{where} holds {what} (dtype {np.asarray(leaf).dtype}); arrays of numbers are "
                    "needed: encode labels as integers (e.g. with numpy.unique(..., return_inverse=True))."
                )
            sizes[f"{name}{jax.tree_util.keystr(path)}"] = int(np.shape(leaf)[0])
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{k} has {v}" for k, v in sizes.items())
        raise ValueError(f"x, y and sample_weight must have the same number of examples: {shown}.")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("The dataset is empty: the arrays have 0 examples.")
    return n


# Arrays are placed on the device with their rows padded to a bucket size: the compiled steps
# take the whole array, so datasets whose lengths share a bucket share the compiled steps. Small
# data (up to SMALL_BYTES once padded) is padded to the next power of two; larger data to the next
# multiple of a sixteenth of its power of two (at most 1/16 more memory).
SMALL_BYTES = 64 << 20


def bucket_rows(n: int, row_bytes: int) -> int:
    """The padded number of rows for ``n`` rows of ``row_bytes`` bytes each."""
    power = 1 << max(n - 1, 0).bit_length()
    if power * row_bytes <= SMALL_BYTES:
        return power
    step = max(power // 16, 1)
    return -(-n // step) * step


def _row_bytes(tree: Any) -> int:
    return sum(int(np.prod(np.shape(a)[1:])) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def place(batch: Any, n: int) -> Any:
    """The arrays on the device, each padded with zero rows to ``bucket_rows(n, ...)``."""
    rows = bucket_rows(n, _row_bytes(batch))

    def padded(a: Any) -> Any:
        a = as_array(a)
        if rows == n:
            return a
        tail = ((0, rows - n),) + ((0, 0),) * (a.ndim - 1)
        return jnp.pad(a, tail) if isinstance(a, jax.Array) else np.pad(a, tail)

    return jax.device_put(jax.tree.map(padded, batch))


@dataclasses.dataclass
class ArrayData:
    """In-memory arrays on the device: ``n`` examples along axis 0 of every leaf of ``batch``,
    followed by zero rows up to the bucket size (see ``place``).

    ``block``: the rows are laid out in blocks of that many, every leaf of shape ``(blocks,
    block, ...)`` with row ``r`` at ``[r // block, r % block]`` (``Placement.data`` does this on
    a mesh: each block is a batch split over the devices, so a step takes its batch without
    moving rows between them). None: one row per index of axis 0.
    """

    batch: Any
    n: int
    block: int | None = None

    @property
    def rows(self) -> int:
        """The rows held, padding included."""
        return jax.tree.leaves(self.batch)[0].shape[0] * (self.block or 1)

    def flat(self) -> Any:
        """The arrays with one row per index of axis 0, padding included."""
        if not self.block:
            return self.batch
        return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), self.batch)

    def first(self, rows: int) -> Any:
        """The first ``rows`` rows (at most one block when blocked)."""
        if self.block:
            return jax.tree.map(lambda a: a[0, :rows], self.batch)
        return jax.tree.map(lambda a: a[:rows], self.batch)

    def real(self) -> Any:
        """The arrays without the padding rows."""
        return jax.tree.map(lambda a: a[: self.n], self.flat())

    def take(self, start: int, stop: int) -> ArrayData:
        """Rows ``start:stop`` (placed again, padded to their own bucket)."""
        return ArrayData(place(jax.tree.map(lambda a: a[start:stop], self.flat()), stop - start), stop - start)


class _Tracked:
    """An iterator wrapper that can push a batch back and, when the wrapped iterator has
    ``get_state()`` / ``set_state()`` (grain), remembers its state after each batch pulled."""

    def __init__(self, it: Iterator[Any], pulled: int = 0):
        self._it = it
        self.stateful = callable(getattr(it, "get_state", None)) and callable(getattr(it, "set_state", None))
        self.pulled = pulled
        self._pushed: list[Any] = []
        # bounded for streams nobody reports progress on (evaluate); training prunes it
        self._states: collections.deque[tuple[int, Any]] = collections.deque(maxlen=1024)
        self._record()

    def _record(self) -> None:
        if self.stateful:
            self._states.append((self.pulled, self._it.get_state()))

    def __iter__(self) -> _Tracked:
        return self

    def __next__(self) -> Any:
        if self._pushed:
            return self._pushed.pop()
        item = next(self._it)
        self.pulled += 1
        self._record()
        return item

    def push_back(self, item: Any) -> None:
        self._pushed.append(item)

    def state_after(self, count: int) -> Any:
        """The iterator's state once ``count`` batches were pulled (None if unknown)."""
        for pulled, state in self._states:
            if pulled == count:
                return state
        return None

    def forget_before(self, count: int) -> None:
        while len(self._states) > 1 and self._states[0][0] < count:
            self._states.popleft()

    def set_state(self, state: Any, pulled: int) -> None:
        self._it.set_state(state)
        self._pushed.clear()
        self._states.clear()
        self.pulled = pulled
        self._record()


@dataclasses.dataclass
class IterData:
    """A source of ready-made batches.

    ``one_shot`` sources (iterators, grain ``IterDataset``) are read as one stream across epochs;
    others are iterated afresh each epoch. ``length`` is ``len(source)`` when known.

    The training loop reports each trained batch with ``advance``; ``position_state`` is then the
    ``get_state()`` of the underlying iterator right after the last trained batch (for iterators
    that have one, such as grain's), however far ahead prefetching has read.
    """

    source: Any
    one_shot: bool
    length: int | None
    class_weight: dict[int, float] | None = None
    keys: BatchKeys = dataclasses.field(default_factory=BatchKeys)
    _stream: _Tracked | None = None  # one-shot: the stream; else the current epoch's iterator
    _consumed: int = 0  # batches trained from ``_stream`` (one-shot: since it was positioned)
    _restore: Any = None  # an iterator state to set at the next ``epoch``

    def peek(self) -> Any:
        """The first batch, without consuming it (raises if the source is empty)."""
        if self.one_shot:
            if self._stream is None:
                self._stream = _Tracked(iter(self.source))
            try:
                first = next(self._stream)
            except StopIteration:
                raise ValueError("The dataset is empty: its iterator yielded no batch.") from None
            self._stream.push_back(first)
        else:
            try:
                first = next(iter(self.source))
            except StopIteration:
                raise ValueError("The dataset is empty: iterating it yielded no batch.") from None
        return self._prepare(first)

    def epoch(self, steps: int | None, skip: int = 0) -> Iterator[Any]:
        """Batches of one epoch: at most ``steps`` (all when None), after skipping ``skip``.

        A one-shot stream continues where it stopped (``skip`` only shortens the epoch); a
        re-iterable source starts a new iterator and skips ``skip`` batches, by setting a state
        given to ``restore_position`` when its iterator takes one, else by reading them.
        """
        restore, self._restore = self._restore, None
        if self.one_shot:
            if self._stream is None:
                self._stream = _Tracked(iter(self.source))
            if restore is not None and self._stream.stateful:
                self._stream.set_state(restore, pulled=0)
                self._consumed = 0
            it: Iterator[Any] = self._stream
        else:
            self._stream = _Tracked(iter(self.source))
            self._consumed = skip
            it = self._stream
            if skip and restore is not None and self._stream.stateful:
                self._stream.set_state(restore, pulled=skip)
            elif skip:
                it = itertools.islice(it, skip, None)
        if steps is not None:
            it = itertools.islice(it, max(steps - skip, 0))
        return (self._prepare(b) for b in it)

    def advance(self, count: int) -> None:
        """Record that ``count`` more batches were trained."""
        self._consumed += count
        if self._stream is not None:
            self._stream.forget_before(self._consumed)

    def position_state(self) -> Any:
        """The source iterator's state after the last trained batch; None when it has none."""
        if self._stream is None or not self._stream.stateful:
            return None
        return self._stream.state_after(self._consumed)

    def restore_position(self, state: Any) -> None:
        """Set ``state`` (from ``position_state``) on the iterator of the next ``epoch``."""
        self._restore = state

    def _prepare(self, batch: Any) -> Any:
        batch = normalize_batch(batch)
        if self.class_weight is not None:
            _, targets, weights = batch_parts(batch, self.keys)
            cw = class_weights(targets, self.class_weight)
            batch = with_weights(batch, cw if weights is None else np.asarray(weights) * cw, self.keys)
        return batch


def _is_one_shot(x: Any) -> bool:
    try:
        import grain

        if isinstance(x, grain.IterDataset):
            return True
    except ImportError:  # pragma: no cover - grain is a dependency
        pass
    return iter(x) is x


def from_user(
    x: Any,
    y: Any = None,
    sample_weight: Any = None,
    class_weight: dict[int, float] | None = None,
    *,
    keys: BatchKeys,
    need_targets: bool = True,
    inputs_only: bool = False,
) -> ArrayData | IterData:
    """Normalize the Keras calling styles into ArrayData or IterData.

    Args:
      x: inputs (array, tuple or dict of arrays), a ``(x, y[, w])`` tuple, a dict batch of
        arrays, or an iterable of batches.
      y: targets when ``x`` holds only inputs.
      sample_weight: per-example weights for array data.
      class_weight: ``{class: weight}``, multiplied into the sample weights.
      keys: names of dict batch parts.
      need_targets: raise when no targets are found (fit).
      inputs_only: array ``x`` holds only inputs (predict): a tuple is several inputs.
    """
    if x is None:
        raise ValueError("No data: pass x (arrays or a dataset).")
    if y is None and not is_array(x) and not isinstance(x, dict | tuple | list):
        if sample_weight is not None:
            raise ValueError("sample_weight is for array data; put the weights in the dataset's batches.")
        if not isinstance(x, Iterable):
            raise TypeError(f"x must be arrays or an iterable of batches, got {type(x).__name__}.")
        length = len(x) if hasattr(x, "__len__") else None
        if length == 0:
            raise ValueError("The dataset is empty: it has length 0.")
        return IterData(x, _is_one_shot(x), length, class_weight, keys)
    batches_list = isinstance(x, list) and x and all(isinstance(b, tuple | list | dict) for b in x)
    if y is None and isinstance(x, list | tuple) and x and (batches_list or not _all_arrays(x)):
        if sample_weight is not None:
            raise ValueError("sample_weight is for array data; put the weights in the batches.")
        return IterData(list(x), False, len(x), class_weight, keys)
    if y is None and isinstance(x, list | tuple) and not x:
        raise ValueError("The dataset is empty: x is an empty sequence.")
    batch = (x,) if inputs_only else _array_batch(x, y, sample_weight, keys, need_targets)
    n = _check_lengths(_named_parts(batch, keys))
    if class_weight is not None:
        _, targets, weights = batch_parts(batch, keys)
        cw = class_weights(targets, class_weight)
        batch = with_weights(batch, cw if weights is None else np.asarray(weights) * cw, keys)
    return ArrayData(place(batch, n), n)


def _named_parts(batch: Any, keys: BatchKeys) -> dict[str, Any]:
    if isinstance(batch, dict):
        return {f"x[{k!r}]": v for k, v in batch.items()}
    inputs, targets, weights = batch_parts(batch, keys)
    return {"x": inputs, "y": targets, "sample_weight": weights}


def _array_batch(x: Any, y: Any, w: Any, keys: BatchKeys, need_targets: bool) -> Any:
    if not _all_arrays(x):
        raise TypeError(f"x must hold arrays; got {type(x).__name__} with non-array leaves.")
    if y is not None:
        batch: Any = (x if not isinstance(x, list) else tuple(x), y)
    elif isinstance(x, dict):
        batch = dict(x)
    elif isinstance(x, tuple | list) and len(x) in (2, 3):
        batch = tuple(x)
    else:
        batch = (x,)
    if w is not None:
        batch = with_weights(batch, w, keys)
    if need_targets and batch_parts(batch, keys)[1] is None and not isinstance(batch, dict):
        raise ValueError(
            "fit needs targets: pass y, a (x, y) tuple, or dict batches with the target key "
            f"{keys.target!r}."
        )
    return batch


def split_tail(data: ArrayData | IterData, fraction: float) -> tuple[ArrayData, ArrayData]:
    """Keras's ``validation_split``: the last ``fraction`` of the (unshuffled) arrays."""
    if not isinstance(data, ArrayData):
        raise ValueError("validation_split needs array data; pass validation_data for datasets.")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_split must be in (0, 1), got {fraction}.")
    cut = int(data.n * (1.0 - fraction))
    if cut == 0 or cut == data.n:
        raise ValueError(
            f"validation_split={fraction} of {data.n} examples leaves an empty training or "
            "validation set."
        )
    return data.take(0, cut), data.take(cut, data.n)
