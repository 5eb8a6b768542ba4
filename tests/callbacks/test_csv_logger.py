import csv

import pytest
from _standin import StandInTrainer, TinyModel, run_epochs

from callbacks import CSVLogger


def _read(path, separator=","):
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter=separator))


def test_one_row_per_epoch_with_sorted_keys(tmp_path):
    path = tmp_path / "log.csv"
    logs = [{"val_loss": 0.75, "loss": 0.5, "accuracy": 0.25}, {"val_loss": 0.5, "loss": 0.25, "accuracy": 0.5}]
    run_epochs(StandInTrainer(TinyModel()), [CSVLogger(path)], logs)
    rows = _read(path)
    assert rows[0] == ["epoch", "accuracy", "loss", "val_loss"]
    assert [[int(r[0]), *map(float, r[1:])] for r in rows[1:]] == [[0, 0.25, 0.5, 0.75], [1, 0.5, 0.25, 0.5]]


def test_separator_and_overwrite(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("old contents\n")
    run_epochs(StandInTrainer(TinyModel()), [CSVLogger(path, separator="\t")], [{"loss": 1.5}])
    assert _read(path, "\t") == [["epoch", "loss"], ["0", "1.5"]]


def test_append_continues_the_file_under_one_header(tmp_path):
    path = tmp_path / "log.csv"
    trainer = StandInTrainer(TinyModel())
    run_epochs(trainer, [CSVLogger(path)], [{"loss": 1.0}, {"loss": 0.5}])
    logger = CSVLogger(path, append=True)
    hooks_logs = [{"loss": 0.25}]
    run_epochs(trainer, [logger], hooks_logs)
    assert _read(path) == [["epoch", "loss"], ["0", "1.0"], ["1", "0.5"], ["0", "0.25"]]


def test_append_to_a_missing_file_writes_the_header(tmp_path):
    path = tmp_path / "new.csv"
    run_epochs(StandInTrainer(TinyModel()), [CSVLogger(path, append=True)], [{"loss": 2.0}])
    assert _read(path) == [["epoch", "loss"], ["0", "2.0"]]


def test_keys_missing_or_appearing_later_are_na(tmp_path):
    path = tmp_path / "log.csv"
    logs = [{"loss": 1.0}, {"loss": 0.5, "val_loss": 0.75}, {"loss": 0.25}]
    run_epochs(StandInTrainer(TinyModel()), [CSVLogger(path)], logs)
    assert _read(path) == [
        ["epoch", "loss", "val_loss"],
        ["0", "1.0", "NA"],
        ["1", "0.5", "0.75"],
        ["2", "0.25", "NA"],
    ]


def test_bad_separator_and_no_batch_hooks(tmp_path):
    with pytest.raises(ValueError, match="separator must be one character, got ';;'"):
        CSVLogger(tmp_path / "x.csv", separator=";;")
    assert not CSVLogger(tmp_path / "x.csv").overrides("on_train_batch_end")
