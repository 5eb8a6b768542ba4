"""Training pieces: Optimizer, metrics, and the ``tabulate``/``summary`` table; ``__all__`` is
re-exported at the top of ``nnx``."""

from nnx.summary import summary, tabulate
from nnx.training import metrics
from nnx.training.metrics import Metric, MultiMetric
from nnx.training.optimizer import Optimizer

__all__: list[str] = ["Metric", "MultiMetric", "Optimizer", "metrics", "summary", "tabulate"]
