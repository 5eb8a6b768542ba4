"""trainer: compiled Keras-style fit / evaluate / predict over an nnx Module and optax."""

from trainer.model_state import TrainState
from trainer.steps import StepContext
from trainer.trainer import Trainer

__all__ = ["StepContext", "Trainer", "TrainState"]
