"""History: per-epoch logs collected by fit."""

import numpy as np
import optax

import nnx
from callbacks import History
from trainer import Trainer


def test_history_records_each_epoch_and_fit_returns_it():
    h = History()
    h.on_train_begin()
    h.on_epoch_end(0, {"loss": 2.0, "accuracy": 0.5})
    h.on_epoch_end(1, {"loss": 1.0, "accuracy": 0.75})
    assert h.history == {"loss": [2.0, 1.0], "accuracy": [0.5, 0.75]}
    assert h.epoch == [0, 1] and h["loss"] == [2.0, 1.0]
    restored = History()
    restored.load_state_dict(h.state_dict())
    assert restored.history == h.history and restored.epoch == [0, 1]


def test_fit_returns_the_trainers_history():
    x = np.ones((8, 2), np.float32)
    y = np.zeros((8, 1), np.float32)
    t = Trainer(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1))
    history = t.fit(x, y, epochs=3, initial_epoch=1, verbose=0)
    assert history is t.history and history.epoch == [1, 2]
    assert list(history.history) == ["loss"]
    assert history.history["loss"][1] < history.history["loss"][0]
