"""trainer: compiled Keras-style fit / evaluate / predict over an nnx Module and optax."""

from trainer.steps import TrainState
from trainer.trainer import Trainer

__all__ = ["Trainer", "TrainState"]
