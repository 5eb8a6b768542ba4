"""Callbacks: the hooks a Trainer calls, and the built-in callbacks."""

from callbacks.backup import BackupAndRestore
from callbacks.base import Callback, CallbackList
from callbacks.checkpoint import ModelCheckpoint
from callbacks.csv_logger import CSVLogger
from callbacks.early_stopping import EarlyStopping
from callbacks.history import History
from callbacks.lambda_callback import LambdaCallback
from callbacks.lr_scheduler import LearningRateScheduler
from callbacks.progress import ProgressBar
from callbacks.reduce_lr import ReduceLROnPlateau
from callbacks.tensorboard import TensorBoard
from callbacks.terminate_on_nan import TerminateOnNaN
