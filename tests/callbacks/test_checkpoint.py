import os

import numpy as np
import optax
import pytest
from _standin import Regressor, regression_data

from callbacks import ModelCheckpoint
from trainer.trainer import Trainer


def _fit(directory, epochs, resume=False, **kwargs):
    x, y = regression_data(32)
    model = Regressor()
    trainer = Trainer(model, optax.adam(0.05), loss="mse")
    ckpt = ModelCheckpoint(directory, **kwargs)
    history = trainer.fit(x, y, epochs=epochs, batch_size=8, verbose=0, shuffle=True,
                          callbacks=[ckpt], resume=resume)
    ckpt.manager.wait_until_finished()
    return trainer, model, ckpt, history


def test_saves_every_epoch_and_resume_continues_to_identical_parameters(tmp_path):
    _, full_model, _, _ = _fit(tmp_path / "full", epochs=3)
    _, _, ckpt, _ = _fit(tmp_path / "run", epochs=2)
    assert ckpt.manager.all_steps() == [4, 8]  # 32 examples / batch 8 = 4 steps per epoch
    trainer, model, _, history = _fit(tmp_path / "run", epochs=3, resume=True)
    assert trainer.step == 12  # only epoch 3 ran; History holds the run's 3 epochs
    assert history.epoch == [0, 1, 2] and len(history.history["loss"]) == 3
    np.testing.assert_array_equal(np.asarray(model.kernel.value), np.asarray(full_model.kernel.value))
    assert not np.array_equal(np.asarray(model.kernel.value), np.zeros((3, 1)))


def test_save_best_only_and_max_to_keep(tmp_path):
    _, _, ckpt, history = _fit(tmp_path, epochs=4, monitor="loss", save_best_only=True, max_to_keep=2)
    assert all(a > b for a, b in zip(history.history["loss"], history.history["loss"][1:], strict=False))
    assert ckpt.manager.all_steps() == [12, 16]
    assert ckpt.best == pytest.approx(history.history["loss"][-1])


def test_batch_save_freq_and_corrupted_checkpoint_falls_back(tmp_path):
    trainer, model, ckpt, _ = _fit(tmp_path, epochs=1, save_freq=3)
    assert ckpt.manager.all_steps() == [3]
    trainer2, _, _, _ = _fit(tmp_path / "other", epochs=2, save_freq=3)
    # step 6 exists in "other"; corrupt it and step 3 must be used instead
    other = ModelCheckpoint(tmp_path / "other")
    other.set_trainer(trainer2)
    assert other.manager.all_steps() == [3, 6]
    for root, _, files in os.walk(tmp_path / "other" / "6" / "state"):
        for name in files:
            os.remove(os.path.join(root, name))
    with pytest.warns(UserWarning, match="checkpoint 6 .* cannot be read"):
        assert other.restore() == 3
    assert trainer2.step == 3


def test_empty_directory_starts_fresh_and_architecture_mismatch_names_the_path(tmp_path, capsys):
    fresh = ModelCheckpoint(tmp_path / "empty")
    assert fresh.latest_state() is None
    assert "no checkpoint" in capsys.readouterr().out
    _, _, ckpt, _ = _fit(tmp_path / "run", epochs=1)

    class Wider(Regressor):
        def __init__(self):
            super().__init__()
            self.kernel.value = np.zeros((4, 1), np.float32)

    other = Trainer(Wider(), optax.adam(0.05), loss="mse")
    loader = ModelCheckpoint(tmp_path / "run")
    loader.set_trainer(other)
    with pytest.raises(ValueError, match=r"'kernel' has shape \(3, 1\) in the checkpoint but \(4, 1\)"):
        loader.restore()


def test_callback_state_is_saved_with_the_checkpoint(tmp_path):
    _, _, ckpt, history = _fit(tmp_path, epochs=2, monitor="loss", save_best_only=True)
    loader = ModelCheckpoint(tmp_path, monitor="loss", save_best_only=True)
    trainer = Trainer(Regressor(), optax.adam(0.05), loss="mse", callbacks=[loader])
    loader.set_trainer(trainer)
    tree = loader.latest_state()
    assert tree["step"] == 8 and tree["epoch"] == 2
    assert sorted(tree["model"]) == ["bias", "kernel"]
    assert sorted(tree["callbacks"]) == ["History", "ModelCheckpoint"]
    trainer.load_checkpoint_state(tree)  # outside fit: into the Trainer's own callbacks
    assert loader.best == pytest.approx(ckpt.best) and ckpt.best == pytest.approx(history.history["loss"][1])
