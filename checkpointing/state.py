"""The arrays of a checkpoint tree: what is saved of a model, and checked loading.

Loading checks everything before anything changes: a model whose Variables differ from the
checkpoint's (another architecture) or an optimizer state with other shapes raises a ValueError
naming the paths and shapes, and the live objects are left as they were. Values are cast to the
live dtypes (a bfloat16 model stays bfloat16 when it loads float32 weights; the casts are logged).
``tree_problems`` checks a tree read from disk (keys, types, its step) before it is believed, and
``nonfinite_paths`` finds the NaN / inf arrays that no checkpoint may store.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import nnx

# What checkpoints hold of a model: every Variable but sown intermediates (dropped by each step).
CHECKPOINTED = nnx.Not(nnx.Intermediate)

logger = logging.getLogger("checkpointing")


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _plain_copy(x: Any) -> Any:
    """A copy of an array; typed PRNG keys become their raw ``uint32`` key data."""
    if _is_key(x):
        return jax.random.key_data(x)
    return jnp.array(x, copy=True)


def model_tree(model: Any) -> dict[str, Any]:
    """A pure nested dict of copies of the model's checkpointed Variables (keys as key data)."""
    return jax.tree.map(_plain_copy, nnx.state(model, CHECKPOINTED).to_pure_dict())


def checked_model_values(model: Any, saved: Mapping[str, Any]) -> list[tuple[Any, jax.Array]]:
    """``(Variable, new value)`` for every checkpointed Variable of ``model``, or a ValueError
    naming each path that is missing on one side or has another shape.

    Each value takes the dtype of the Variable it is loaded into (a bfloat16 model loading a
    float32 checkpoint stays bfloat16); when any dtype changes, one log record (logger
    ``"checkpointing"``, level WARNING) names the paths and both dtypes.
    """
    flat = {"/".join(map(str, p)): v for p, v in nnx.State.flatten_mapping(saved).items()}
    out, mismatched, missing, cast = [], [], [], []
    for path, var in nnx.state(model, CHECKPOINTED).flat_state():
        key = "/".join(map(str, path))
        old = var.get_value()
        if key not in flat:
            missing.append(f"'{key}' {tuple(jnp.shape(old))}")
            continue
        value = flat.pop(key)
        if _is_key(old) and not _is_key(value):
            value = jax.random.wrap_key_data(jnp.asarray(value), impl=jax.random.key_impl(old))
        value = jnp.array(value, copy=True)
        if value.shape != jnp.shape(old):
            mismatched.append(f"'{key}' has shape {value.shape} in the checkpoint but {jnp.shape(old)} in the model")
            continue
        dtype = getattr(old, "dtype", None)
        if dtype is not None and not _is_key(old) and value.dtype != dtype:
            cast.append(f"'{key}' {value.dtype} -> {dtype}")
            value = value.astype(dtype)
        out.append((var, value))
    extra = [f"'{k}' {tuple(np.shape(v))}" for k, v in flat.items()]
    if mismatched or missing or extra:
        parts = mismatched[:5]
        if missing:
            parts.append(f"the checkpoint lacks {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if extra:
            parts.append(f"the model lacks {', '.join(extra[:5])}" + (" ..." if len(extra) > 5 else ""))
        raise ValueError(
            f"load_checkpoint_state: the checkpoint does not fit this {type(model).__name__} "
            f"(another architecture?): {'; '.join(parts)}."
        )
    if cast:
        logger.warning(
            "load_checkpoint_state: %d checkpoint value(s) cast to the %s's dtypes: %s%s",
            len(cast), type(model).__name__, ", ".join(cast[:8]), " ..." if len(cast) > 8 else "",
        )
    return out


def checked_leaves(what: str, current: Any, saved: Any) -> Any:
    """``current``'s structure with the leaves of ``saved`` (a dict keyed by leaf index, or a
    pytree), cast to the current dtypes; a ValueError names any leaf whose shape differs."""
    if isinstance(saved, Mapping):
        values = [saved[k] for k in sorted(saved, key=int)]
    else:
        values = jax.tree.leaves(saved)
    paths, treedef = jax.tree_util.tree_flatten_with_path(current)
    if len(values) != len(paths):
        raise ValueError(
            f"load_checkpoint_state: the {what} state has {len(paths)} arrays, the checkpoint "
            f"{len(values)}; was it saved with the same optimizer, metrics and model?"
        )
    out = []
    for (path, old), value in zip(paths, values, strict=True):
        if np.shape(value) != np.shape(old):
            raise ValueError(
                f"load_checkpoint_state: the {what} state's {jax.tree_util.keystr(path)} has shape "
                f"{np.shape(value)} in the checkpoint but {np.shape(old)} here."
            )
        out.append(jnp.array(value, dtype=old.dtype, copy=True))
    return jax.tree.unflatten(treedef, out)


def indexed_copies(tree: Any) -> dict[str, jax.Array]:
    """Copies of a pytree's leaves keyed ``'0'``, ``'1'``... (what ``checked_leaves`` reads)."""
    return {str(i): jnp.array(x, copy=True) for i, x in enumerate(jax.tree.leaves(tree))}


# -- iterator states ---------------------------------------------------------------------


def encode_iterator_state(state: Any) -> str:
    """A string holding an iterator's ``get_state()`` (a JSON-able dict, or bytes as grain's
    ``DataLoader`` gives), so that it is stored as plain checkpoint metadata."""
    if isinstance(state, bytes | bytearray):
        return "bytes:" + base64.b64encode(bytes(state)).decode("ascii")
    return "json:" + json.dumps(state, default=_json_default)


def decode_iterator_state(text: str) -> Any:
    """The state that ``encode_iterator_state`` encoded (JSON values or bytes).

    Raises a ValueError saying what is wrong with a damaged one.
    """
    if not isinstance(text, str):
        raise ValueError(f"the data-iterator state is a {type(text).__name__}, not an encoded string")
    kind, _, body = text.partition(":")
    try:
        if kind == "bytes":
            return base64.b64decode(body, validate=True)
        if kind == "json":
            return json.loads(body)
    except (ValueError, binascii.Error) as error:
        raise ValueError(f"the data-iterator state {text[:40]!r} cannot be decoded ({error})") from None
    raise ValueError(f"unknown data-iterator state {text[:40]!r} (expected 'json:' or 'bytes:')")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(
        f"The data iterator's get_state() holds a {type(value).__name__}, which cannot be "
        "stored in a checkpoint; it must hold JSON values (or be bytes)."
    )


# -- the Trainer's checkpoint tree ------------------------------------------------------


class Restored(NamedTuple):
    """A checked checkpoint tree, ready to be applied (nothing was changed yet)."""

    model_values: list[tuple[Any, jax.Array]]
    opt_state: Any
    metrics: Any  # None when the tree has none or the call has no running metrics
    step: int | None
    epoch: int | None
    batch: int
    rng: np.ndarray | None
    callbacks: Mapping[str, Any] | None
    data: Any  # the decoded data-iterator state, or None


def collect(
    *, model: Any, opt_state: Any, step: int, epoch: int, batch: int, rng_key: jax.Array,
    callbacks: Mapping[str, Any], metrics: Any = None, data_position: Any = None,
) -> dict[str, Any]:
    """The checkpoint tree (arrays and Python values) of a Trainer.

    Keys: ``model`` (a pure nested dict of the model's State, sown intermediates left out),
    ``optimizer`` (the optax state's leaves keyed ``'0'``, ``'1'``...), ``step``, ``epoch`` and
    ``batch`` (the next batch to run), ``rng`` (the data of the shuffle key), ``callbacks`` (the
    callbacks' states), and when given ``metrics`` (the running sums of the epoch in progress)
    and ``data`` (the data iterator's state, encoded).
    """
    tree: dict[str, Any] = {
        "model": model_tree(model),
        "optimizer": indexed_copies(opt_state),
        "step": int(step),
        "epoch": int(epoch),
        "batch": int(batch),
        "rng": np.asarray(jax.random.key_data(rng_key)),
        "callbacks": dict(callbacks),
    }
    if metrics:
        tree["metrics"] = indexed_copies(metrics)
    if data_position is not None:
        tree["data"] = encode_iterator_state(data_position)
    return tree


def _is_count(value: Any) -> bool:
    """An int >= 0 (a Python int or a 0-d integer array, as ``jax.tree.map`` may leave it)."""
    if isinstance(value, bool) or not (isinstance(value, int) or hasattr(value, "dtype")):
        return False
    if isinstance(value, int):
        return value >= 0
    return np.ndim(value) == 0 and jnp.issubdtype(value.dtype, jnp.integer) and int(value) >= 0


def tree_problems(tree: Any, step: int | None = None) -> list[str]:
    """What is wrong with a checkpoint tree (empty when nothing is): missing or mistyped keys.

    ``model`` and ``optimizer`` are always required. ``step`` is the number of the checkpoint
    the tree was read from: ``step`` and ``epoch`` are then required too, and the tree's own
    step must equal it. A ``data`` entry must decode (``decode_iterator_state``).
    """
    if not isinstance(tree, Mapping):
        return [f"the checkpoint is a {type(tree).__name__}, not a mapping"]
    problems = []
    for key in ("model", "optimizer") + (("step", "epoch") if step is not None else ()):
        if key not in tree:
            problems.append(f"it has no '{key}'")
    for key in ("model", "callbacks"):
        if key in tree and not isinstance(tree[key], Mapping):
            problems.append(f"its '{key}' is a {type(tree[key]).__name__}, not a mapping")
    for key in ("step", "epoch", "batch"):
        if key in tree and not _is_count(tree[key]):
            problems.append(f"its '{key}' is {tree[key]!r}, not an int >= 0")
    if step is not None and _is_count(tree.get("step")) and int(tree["step"]) != step:
        problems.append(f"its metadata says step {tree['step']} but it is checkpoint {step}")
    if "rng" in tree:
        rng = tree["rng"]
        if not hasattr(rng, "dtype") or not jnp.issubdtype(rng.dtype, jnp.unsignedinteger):
            problems.append(f"its 'rng' is {type(rng).__name__} {getattr(rng, 'dtype', '')}, not key data (uint32)")
    if "data" in tree:
        try:
            decode_iterator_state(tree["data"])
        except ValueError as error:
            problems.append(str(error))
    return problems


def nonfinite_paths(tree: Mapping[str, Any]) -> list[str]:
    """The paths (``'model/l1/kernel'``, ``'optimizer/3'``) of the floating-point arrays of a
    checkpoint tree's ``model`` and ``optimizer`` that hold a NaN or an infinity.

    A host check: the arrays are fetched from the device (as the write itself does).
    """
    named: list[tuple[str, Any]] = []
    for part in ("model", "optimizer"):
        if part not in tree:
            continue
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree[part])[0]:
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
                named.append(("/".join([part, *map(_key_name, path)]), leaf))
    values = jax.device_get([_addressable(leaf) for _, leaf in named])
    return [
        name for (name, _), parts in zip(named, values, strict=True)
        if not all(np.isfinite(v).all() for v in parts)
    ]


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _addressable(x: Any) -> list[Any]:
    """The data of ``x`` on this host: ``[x]``, or its local shards when it spans hosts."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return [shard.data for shard in x.addressable_shards]
    return [x]


def read(tree: Mapping[str, Any], *, model: Any, opt_state: Any, metrics: Any = None) -> Restored:
    """Check ``tree`` against the live ``model``, ``opt_state`` and running ``metrics``.

    ``model`` and ``optimizer`` are required; the other keys are read when present. Raises a
    ValueError naming what does not fit, before anything is changed.
    """
    problems = tree_problems(tree)
    if problems:
        raise ValueError(f"load_checkpoint_state: the checkpoint cannot be used: {'; '.join(problems)}.")
    values = checked_model_values(model, tree["model"])
    new_opt = checked_leaves("optimizer", opt_state, tree["optimizer"])
    new_metrics = None
    if metrics and "metrics" in tree:
        new_metrics = checked_leaves("metrics", metrics, tree["metrics"])
    data = decode_iterator_state(tree["data"]) if "data" in tree else None
    return Restored(
        values, new_opt, new_metrics,
        int(tree["step"]) if "step" in tree else None,
        int(tree["epoch"]) if "epoch" in tree else None,
        int(tree.get("batch", 0)),
        np.asarray(tree["rng"]) if "rng" in tree else None,
        tree.get("callbacks"),
        data,
    )
