import struct
from pathlib import Path

import numpy as np
import pytest
from _standin import StandInTrainer, TinyModel, run_epochs, set_weights
from tensorboardX.proto import event_pb2

from callbacks import TensorBoard


def _read_events(run_dir: Path) -> list[tuple[int, str, object]]:
    """(step, tag, value) for every summary value in the run's event files (TFRecord framing)."""
    out = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            offset += 12  # length and its CRC
            event = event_pb2.Event.FromString(data[offset : offset + length])
            offset += length + 4  # payload and its CRC
            for value in event.summary.value:
                payload = value.histo if value.HasField("histo") else value.simple_value
                out.append((event.step, value.tag, payload))
    return out


def _scalars(events):
    return {(step, tag): value for step, tag, value in events if isinstance(value, float)}


def test_epoch_scalars_go_to_train_and_validation_runs(tmp_path):
    trainer = StandInTrainer(TinyModel(), learning_rate=0.01)
    logs = [
        {"loss": 0.5, "accuracy": 0.25, "val_loss": 0.75, "val_accuracy": 0.125, "learning_rate": 0.01},
        {"loss": 0.25, "accuracy": 0.5, "val_loss": 0.5, "val_accuracy": 0.375, "learning_rate": 0.005},
    ]
    run_epochs(trainer, [TensorBoard(log_dir=tmp_path)], logs)
    train = _scalars(_read_events(tmp_path / "train"))
    validation = _scalars(_read_events(tmp_path / "validation"))
    assert train == {
        (0, "epoch_loss"): 0.5, (0, "epoch_accuracy"): 0.25, (0, "epoch_learning_rate"): pytest.approx(0.01),
        (1, "epoch_loss"): 0.25, (1, "epoch_accuracy"): 0.5, (1, "epoch_learning_rate"): pytest.approx(0.005),
    }
    assert validation == {
        (0, "epoch_loss"): 0.75, (0, "epoch_accuracy"): 0.125,
        (1, "epoch_loss"): 0.5, (1, "epoch_accuracy"): 0.375,
    }


def test_learning_rate_scale_is_logged_when_logs_lack_it(tmp_path):
    trainer = StandInTrainer(TinyModel(), learning_rate=None)
    trainer.lr_scale = 0.5
    run_epochs(trainer, [TensorBoard(log_dir=tmp_path)], [{"loss": 1.0}])
    assert _scalars(_read_events(tmp_path / "train")) == {(0, "epoch_loss"): 1.0, (0, "epoch_lr_scale"): 0.5}


def test_update_freq_writes_batch_scalars_every_n_batches(tmp_path):
    trainer = StandInTrainer(TinyModel())
    board = TensorBoard(log_dir=tmp_path, update_freq=2)
    assert board.overrides("on_train_batch_end")
    run_epochs(trainer, [board], [{"loss": 0.5}, {"loss": 0.25}], steps_per_epoch=3)
    batch = {k: v for k, v in _scalars(_read_events(tmp_path / "train")).items() if k[1].startswith("batch_")}
    # global batches 1..6; every second one: 2 (epoch 0), 4 and 6 (epoch 1)
    assert batch == {(2, "batch_loss"): 0.5, (4, "batch_loss"): 0.25, (6, "batch_loss"): 0.25}


def test_epoch_update_freq_defines_no_batch_hook():
    board = TensorBoard()
    assert not board.overrides("on_train_batch_end")
    assert not board.overrides("on_train_batch_begin")
    assert board.overrides("on_epoch_end")


def test_histograms_of_params_every_histogram_freq_epochs(tmp_path):
    model = TinyModel()
    trainer = StandInTrainer(model)
    board = TensorBoard(log_dir=tmp_path, histogram_freq=2)
    run_epochs(trainer, [board], [{"loss": 1.0}] * 3, on_epoch=lambda e: set_weights(model, e + 1.0))
    histograms = {(step, tag): h for step, tag, h in _read_events(tmp_path / "train") if not isinstance(h, float)}
    assert sorted(histograms) == [(0, "bias"), (0, "kernel"), (2, "bias"), (2, "kernel")]
    kernel = histograms[(2, "kernel")]
    assert (kernel.num, kernel.min, kernel.max, kernel.sum) == (6, 3.0, 3.0, 18.0)
    assert histograms[(0, "bias")].sum == 2.0


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="update_freq must be 'epoch', 'batch' or an int >= 1, got 0"):
        TensorBoard(update_freq=0)
    with pytest.raises(ValueError, match="histogram_freq must be an int >= 0, got -1"):
        TensorBoard(histogram_freq=-1)


def test_writers_are_closed_at_train_end(tmp_path):
    board = TensorBoard(log_dir=tmp_path)
    run_epochs(StandInTrainer(TinyModel()), [board], [{"loss": 1.0, "val_loss": 2.0}])
    assert board._writers == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train", "validation"]
    assert np.isclose(_scalars(_read_events(tmp_path / "validation"))[(0, "epoch_loss")], 2.0)
