"""ProgressBar: tqdm bars on terminals, plain lines elsewhere, silent at verbose=0."""

import io

import numpy as np
import optax

import nnx
from callbacks import ProgressBar
from trainer import Trainer


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _fit(cb, epochs=2, **kw):
    x = np.ones((40, 2), np.float32)
    y = np.zeros((40, 1), np.float32)
    t = Trainer(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1), metrics=["mae"])
    return t, t.fit(x, y, epochs=epochs, batch_size=8, callbacks=[cb] if cb else None, **kw)


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    _fit(ProgressBar(verbose=1, file=out))
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Epoch 1/2 - 5 steps") and "loss: " in lines[0] and "mae: " in lines[0]


def test_tqdm_bar_on_a_terminal_shows_steps_and_running_loss():
    out = Terminal()
    _fit(ProgressBar(verbose=1, file=out, refresh_seconds=0.0))
    text = out.getvalue()
    assert "Epoch 1/2" in text and "Epoch 2/2" in text
    assert "5/5" in text and "loss" in text and "step" in text


def test_verbose_2_one_line_per_epoch_and_verbose_0_silent(capsys):
    out = io.StringIO()
    _fit(ProgressBar(verbose=2, file=out), epochs=3)
    assert len(out.getvalue().strip().splitlines()) == 3
    assert "inferred" in capsys.readouterr().out  # the loss announcement, once
    _fit(None, verbose=0)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_evaluate_and_predict_bars():
    out = io.StringIO()
    t, _ = _fit(None, verbose=0)
    t.evaluate(np.ones((10, 2), np.float32), np.zeros((10, 1), np.float32), callbacks=[ProgressBar(file=out)])
    t.predict(np.ones((10, 2), np.float32), callbacks=[ProgressBar(file=out)])
    lines = out.getvalue().strip().splitlines()
    assert lines[0].startswith("Evaluate - 1 steps") and "loss: " in lines[0]
    assert lines[1].startswith("Predict - 1 steps")
