"""checkpointing: the Trainer's checkpoint format, its checks, and its orbax storage.

``store.CheckpointStore`` keeps numbered checkpoints in a directory (orbax-checkpoint's
``CheckpointManager``); ``state`` turns a model, an optimizer state and the loop's progress into a
checkpoint tree and back, checking every array against the live structure before anything is
changed. ``Trainer.save`` / ``restore``, ``ModelCheckpoint`` and ``BackupAndRestore`` all use them.
"""

from checkpointing.state import (
    CHECKPOINTED,
    Restored,
    checked_leaves,
    checked_model_values,
    collect,
    decode_iterator_state,
    encode_iterator_state,
    model_tree,
    nonfinite_paths,
    read,
    tree_problems,
)
from checkpointing.store import (
    CheckpointReadError,
    CheckpointStore,
    CheckpointWriteError,
    NonFiniteStateError,
)

__all__ = [
    "CHECKPOINTED",
    "CheckpointReadError",
    "CheckpointStore",
    "CheckpointWriteError",
    "NonFiniteStateError",
    "Restored",
    "collect",
    "read",
    "checked_leaves",
    "checked_model_values",
    "decode_iterator_state",
    "encode_iterator_state",
    "model_tree",
    "nonfinite_paths",
    "tree_problems",
]
