"""The compiled forms of the steps: one step or a ``lax.scan`` over several per dispatch,
taking the batch from on-device arrays or a fed batch, on the state's flat leaves.

``StepCompiler.get`` builds a compiled function from exactly its arguments (the kind of step,
the step callable, its ``StepContext``, the ``Program`` shape, the state's tree structure and
whether buffers are donated) and caches it under the tuple of those arguments: the cache key is
what the compiled function closes over, so it cannot go stale while a key is unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax

from trainer import batches as batchlib
from trainer.model_state import NEXT_POS, POS, TrainState
from trainer.steps import StepContext, add_step_logs


@dataclasses.dataclass(frozen=True)
class Gather:
    """How a step takes its batch from on-device arrays: ``size`` rows from row
    ``pos * stride``, through a permutation (``ordered=False``: fit with shuffling), in order
    (a slice), or in order with the rows past ``n`` masked (``masked``: evaluate, predict).
    ``blocked``: the data is in blocks of ``stride`` rows and the batch is block ``pos``."""

    size: int
    stride: int
    masked: bool = False
    ordered: bool = True
    blocked: bool = False  # the data is laid out in blocks of ``stride`` rows (ArrayData.block)


@dataclasses.dataclass(frozen=True)
class Program:
    """The shape of one compiled call.

    Attributes:
      kind: ``"train"``, ``"eval"`` or ``"predict"``.
      gather: how the batch is taken from on-device data; None when the batch is fed.
      fused: steps per call (``lax.scan`` when > 1; fed batches are then stacked).
      with_logs: return the logs after each step (else None). The Trainer sets it for fused
        blocks only, whoever listens: a single step's logs are the running values of the state
        it returns, so the callbacks attached never change the compiled program.
    """

    kind: str
    gather: Gather | None = None
    fused: int = 1
    with_logs: bool = False


class NewStepKeys(Exception):
    """Raised while a step is traced when its logs hold scalars beyond ``compute_logs``'s that
    the context has no running means for: the caller adds them (``StepContext.step_keys``) and
    calls again. Nothing ran: the exception leaves the trace before any compilation."""

    def __init__(self, keys: tuple[str, ...]):
        super().__init__(f"the step returns new scalar logs {keys}")
        self.keys = keys


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float) or getattr(value, "shape", None) == ()


def _new_keys(logs: Any, running: Any, known: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(logs, dict):
        return ()
    return tuple(sorted(
        k for k, v in logs.items()
        if k not in running and k not in known and not k.startswith("_") and _is_scalar(v)
    ))


class ContextSlot:
    """The ``StepContext`` of the compiled call being traced (None outside a trace)."""

    def __init__(self) -> None:
        self.current: StepContext | None = None

    @contextlib.contextmanager
    def use(self, ctx: StepContext) -> Iterator[None]:
        previous, self.current = self.current, ctx
        try:
            yield
        finally:
            self.current = previous


def take_batch(data: Any, perm: Any, n: Any, pos: jax.Array, gather: Gather, keys: batchlib.BatchKeys) -> Any:
    """The batch at position ``pos`` of on-device ``data`` (traced)."""
    if gather.blocked:
        return batchlib.block_batch(data, perm, n, pos, gather.size, keys, gather.masked)
    start = pos * gather.stride
    if gather.masked:
        return batchlib.masked_gather(data, start, gather.size, n, keys)
    if gather.ordered:
        return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, gather.size), data)
    idx = jax.lax.dynamic_slice(perm, (start,), (gather.size,))
    return batchlib.gather(data, idx)


def _stateful(
    step: Callable[..., Any], program: Program, ctx: StepContext, running: Callable[[TrainState], Any]
) -> Callable[..., Any]:
    """``(state, data, perm, n) -> (state, logs)`` for train and eval steps: the position is
    the state's ``counters[POS]``, advanced by each step. ``running(state)`` is the state's
    running logs (``compute_logs``): the scalars a step returns beyond them are averaged
    (``ctx.step_keys``; a new one raises ``NewStepKeys``)."""
    gather, with_logs, keys, step_keys = program.gather, program.with_logs, ctx.keys, ctx.step_keys

    def one(state: TrainState, data: Any, perm: Any, n: Any) -> tuple[TrainState, Any]:
        batch = data if gather is None else take_batch(data, perm, n, state.counters[POS], gather, keys)
        state, logs = step(state, batch)
        new = _new_keys(logs, running(state), step_keys)
        if new:
            raise NewStepKeys(new)
        if step_keys:
            state = add_step_logs(ctx, state, logs)
        state = state._replace(counters=state.counters + NEXT_POS)
        return state, (logs if with_logs else None)

    if program.fused <= 1:
        return one

    def block(state: TrainState, data: Any, perm: Any, n: Any) -> tuple[TrainState, Any]:
        packed = PackedLogs()

        def body(s: TrainState, fed: Any) -> tuple[TrainState, Any]:
            s, logs = one(s, data if gather is not None else fed, perm, n)
            return s, packed.pack(logs)

        if gather is None:  # the fed batches are stacked: the scan takes one per step
            state, stacked = jax.lax.scan(body, state, data)
        else:
            state, stacked = jax.lax.scan(body, state, None, length=program.fused)
        return state, packed.unpack(stacked)

    return block


class PackedLogs:
    """A fused block's per-step logs, their scalars of each dtype stacked into one vector: the
    scan then writes one row per dtype per step instead of one per log (XLA on a CPU pays a
    kernel for each). ``pack`` runs in the scan's body (it records the layout), ``unpack`` on
    the stacked result after the scan; the values are the same bits."""

    def pack(self, logs: Any) -> tuple[list[jax.Array], list[Any]]:
        leaves, self.treedef = jax.tree.flatten(logs)
        self.slots: list[tuple[Any, int] | None] = []  # (dtype, index in its vector) per scalar
        groups: dict[Any, list[jax.Array]] = {}
        rest = []
        for leaf in leaves:
            leaf = jax.numpy.asarray(leaf)
            if leaf.shape == ():
                group = groups.setdefault(leaf.dtype, [])
                self.slots.append((leaf.dtype, len(group)))
                group.append(leaf)
            else:
                self.slots.append(None)
                rest.append(leaf)
        self.dtypes = tuple(groups)
        return [jax.numpy.stack(groups[d]) for d in self.dtypes], rest

    def unpack(self, stacked: tuple[list[jax.Array], list[Any]]) -> Any:
        vectors, rest = stacked
        by_dtype = dict(zip(self.dtypes, vectors, strict=True))
        others = iter(rest)
        leaves = [next(others) if slot is None else by_dtype[slot[0]][:, slot[1]] for slot in self.slots]
        return jax.tree.unflatten(self.treedef, leaves)


def _predicting(step: Callable[..., Any], program: Program, keys: batchlib.BatchKeys) -> Callable[..., Any]:
    """``(state, data, perm, n, pos) -> outputs`` (stacked on a new axis when fused); the
    state is read, not returned."""
    gather = program.gather

    def one(state: TrainState, data: Any, perm: Any, n: Any, pos: Any) -> Any:
        batch = data if gather is None else take_batch(data, perm, n, pos, gather, keys)
        return step(state, batch)

    if program.fused <= 1:
        return one
    if gather is None:
        return lambda state, data, perm, n, pos: jax.lax.scan(
            lambda c, b: (c, one(state, b, None, None, None)), 0, data
        )[1]
    return lambda state, data, perm, n, pos: jax.lax.scan(
        lambda p, _: (p + 1, one(state, data, perm, n, p)), pos, None, length=program.fused
    )[1]


def _on_flat_state(
    pure: Callable[..., Any], treedef: Any, returns_state: bool, shardings: tuple | None = None
) -> Callable[..., Any]:
    """``pure(state, *args)`` as a function of the state's flat leaves: flattening and
    rebuilding the nested TrainState on every call costs as much as a small model's step.
    ``shardings``: the returned leaves are constrained to them (each stays where it was)."""

    def run(leaves: list[Any], *args: Any) -> Any:
        result = pure(jax.tree.unflatten(treedef, leaves), *args)
        if not returns_state:
            return result
        state, out = result
        new_leaves, new_def = jax.tree.flatten(state)
        if new_def != treedef:
            raise TypeError(
                "A step must return a TrainState with the structure it was given; got\n"
                f"  {new_def}\nfor\n  {treedef}."
            )
        if shardings is not None:
            new_leaves = [jax.lax.with_sharding_constraint(v, s) for v, s in zip(new_leaves, shardings, strict=True)]
        return new_leaves, out

    return run


def build(
    kind: str, step: Callable[..., Any], ctx: StepContext, program: Program | None, treedef: Any,
    donate: bool, slot: ContextSlot, logs_step: Callable[..., Any] | None = None,
    shardings: tuple | None = None,
) -> Callable[..., Any]:
    """The jitted form of ``step`` (traced with ``ctx`` in ``slot``).

    ``kind`` ``"logs"`` compiles ``step(state) -> logs`` on ``(metrics, counters)``; the others
    take the flat leaves of a state of structure ``treedef`` and the data arguments; train and
    eval steps also trace ``logs_step`` (``compute_logs``) for the keys of the running logs.
    """

    def in_context(*args: Any) -> Any:
        with slot.use(ctx):
            return step(*args)

    if kind == "logs":
        return jax.jit(lambda metrics, counters: in_context(TrainState(None, (), None, metrics, counters)))
    if kind == "predict":
        return jax.jit(_on_flat_state(_predicting(in_context, program, ctx.keys), treedef, False))
    def running(state: TrainState) -> Any:
        with slot.use(ctx):
            return logs_step(state)

    run = _on_flat_state(_stateful(in_context, program, ctx, running), treedef, True, shardings)
    if not (donate and kind == "train"):
        # evaluation reads the live parameters, which must survive the call: no donation
        return jax.jit(run)
    # The counters (the state's last leaf) are not donated: the host reads earlier ones once
    # they are ready (see ``loop.NonfiniteWatch``) without waiting for the device.
    split = jax.jit(lambda head, counters, *args: run([*head, counters], *args), donate_argnums=(0,))

    def donated(leaves: list[Any], *args: Any) -> Any:
        return split(leaves[:-1], leaves[-1], *args)

    donated.jitted = split  # type: ignore[attr-defined]
    return donated


class StepCompiler:
    """Compiled steps, cached by the arguments of ``build``.

    Args:
      steps: maps each kind (``"train"``, ``"eval"``, ``"predict"``, ``"logs"``) to a
        function returning its step callable now (the Trainer's possibly overridden methods).
      slot: where the context of the call being traced is put for the step to read.
    """

    def __init__(self, steps: dict[str, Callable[[], Callable[..., Any]]], slot: ContextSlot):
        self._steps = steps
        self._slot = slot
        self._cache: dict[tuple, Callable[..., Any]] = {}

    def get(self, kind: str, ctx: StepContext, program: Program | None = None, treedef: Any = None,
            donate: bool = False, shardings: tuple | None = None) -> Callable[..., Any]:
        step = self._steps[kind]()
        logs_step = self._steps["logs"]() if kind in ("train", "eval") else None
        key = (kind, step, logs_step, ctx, program, treedef, donate, shardings)
        fn = self._cache.get(key)
        if fn is None:
            fn = self._cache[key] = build(kind, step, ctx, program, treedef, donate, self._slot, logs_step, shardings)
        return fn

    def compiled(self, kind: str) -> list[Callable[..., Any]]:
        """The compiled functions of ``kind`` built so far (one per distinct key)."""
        return [fn for key, fn in self._cache.items() if key[0] == kind]
