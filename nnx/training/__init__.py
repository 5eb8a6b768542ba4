"""Training pieces: ``Optimizer`` (and ``ModelAndOptimizer``), the metrics, ``EMA`` and
``TrainState``; ``__all__`` is re-exported at the top of ``nnx``. The per-module table
(``nnx.tabulate``) lives in ``nnx.summary``."""

from nnx.training import metrics
from nnx.training.ema import EMA
from nnx.training.metrics import Metric, MultiMetric
from nnx.training.optimizer import ModelAndOptimizer, Optimizer
from nnx.training.train_state import TrainState

__all__: list[str] = [
    "EMA", "Metric", "ModelAndOptimizer", "MultiMetric", "Optimizer", "TrainState", "metrics",
]
