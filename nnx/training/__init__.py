"""Training pieces: ``Optimizer`` and the metrics; ``__all__`` is re-exported at the top of
``nnx``. The per-module table (``nnx.tabulate``) lives in ``nnx.summary``."""

from nnx.training import metrics
from nnx.training.metrics import Metric, MultiMetric
from nnx.training.optimizer import Optimizer

__all__: list[str] = ["Metric", "MultiMetric", "Optimizer", "metrics"]
