"""The arrays of a checkpoint tree: what is saved of a model, and checked loading.

Loading checks everything before anything changes: a model whose Variables differ from the
checkpoint's (another architecture) or an optimizer state with other shapes raises a ValueError
naming the paths and shapes, and the live objects are left as they were.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import nnx

# What checkpoints hold of a model: every Variable but sown intermediates (dropped by each step).
CHECKPOINTED = nnx.Not(nnx.Intermediate)


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
    naming each path that is missing on one side or has another shape."""
    flat = {"/".join(map(str, p)): v for p, v in nnx.State.flatten_mapping(saved).items()}
    out, mismatched, missing = [], [], []
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
    """The state that ``encode_iterator_state`` encoded."""
    kind, _, body = text.partition(":")
    if kind == "bytes":
        return base64.b64decode(body)
    if kind == "json":
        return json.loads(body)
    raise ValueError(f"Unknown data-iterator state in the checkpoint: {text[:40]!r}.")


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


def read(tree: Mapping[str, Any], *, model: Any, opt_state: Any, metrics: Any = None) -> Restored:
    """Check ``tree`` against the live ``model``, ``opt_state`` and running ``metrics``.

    ``model`` and ``optimizer`` are required; the other keys are read when present. Raises a
    ValueError naming what does not fit, before anything is changed.
    """
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
