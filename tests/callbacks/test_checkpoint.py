import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _standin import Regressor, regression_data

import nnx
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
    fresh.set_params({"verbose": 1})
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


def test_fit_resume_with_an_empty_directory_starts_fresh_and_without_a_checkpoint_callback_raises(tmp_path, capsys):
    x, y = regression_data(16)
    trainer = Trainer(Regressor(), optax.adam(0.05), loss="mse")
    trainer.fit(x, y, batch_size=8, verbose=0, resume=True, callbacks=[ModelCheckpoint(tmp_path / "empty")])
    assert capsys.readouterr().out == ""  # verbose=0 is silent
    trainer.fit(x, y, batch_size=8, verbose=2, resume=True, callbacks=[ModelCheckpoint(tmp_path / "empty2")])
    out = capsys.readouterr().out
    assert "no checkpoint in" in out and "starting fresh" in out
    assert trainer.step == 4  # two fits of 2 steps, both started fresh
    with pytest.raises(ValueError, match=r"fit\(resume=True\) needs a checkpointing callback"):
        trainer.fit(x, y, batch_size=8, verbose=0, resume=True)


def test_trainer_save_and_restore_outside_fit(tmp_path):
    x, y = regression_data(16)
    trainer = Trainer(Regressor(), optax.adam(0.05), loss="mse")
    trainer.fit(x, y, batch_size=8, verbose=0)
    assert trainer.save(tmp_path / "ckpt") == 2
    trainer.fit(x, y, batch_size=8, verbose=0)
    assert trainer.save(tmp_path / "ckpt") == 4 and os.listdir(tmp_path / "ckpt") == ["4"]  # replaced
    model = Regressor()
    other = Trainer(model, optax.adam(0.05), loss="mse")
    assert other.restore(tmp_path / "ckpt") == 4 and other.step == 4
    np.testing.assert_array_equal(np.asarray(model.kernel.value), np.asarray(trainer.model.kernel.value))
    saved, restored = trainer.checkpoint_state()["optimizer"], other.checkpoint_state()["optimizer"]
    assert len(saved) == len(restored) == 6  # adam's count, mu, nu (kernel and bias), lr_scale
    for key in saved:
        np.testing.assert_array_equal(np.asarray(saved[key]), np.asarray(restored[key]))
    with pytest.raises(FileNotFoundError, match="Trainer.restore: no checkpoint in"):
        other.restore(tmp_path / "nothing")


def test_restoring_another_architecture_names_the_paths_and_shapes_and_changes_nothing(tmp_path):
    saved = Regressor()
    saved.kernel.value, saved.bias.value = jnp.full((3, 1), 2.0), jnp.full((1,), 3.0)
    Trainer(saved, optax.adam(0.05), loss="mse").save(tmp_path)

    class Wider(Regressor):
        def __init__(self):
            super().__init__()
            self.kernel = nnx.Param(jnp.ones((4, 1)))

    class Deeper(Regressor):
        def __init__(self):
            super().__init__()
            self.extra = nnx.Param(jnp.ones((2,)))

    class NoBias(nnx.Module):
        def __init__(self):
            self.kernel = nnx.Param(jnp.ones((3, 1)))

    cases = [
        (Wider, r"'kernel' has shape \(3, 1\) in the checkpoint but \(4, 1\) in the model"),
        (Deeper, r"the checkpoint lacks 'extra' \(2,\)"),
        (NoBias, r"the model lacks 'bias' \(1,\)"),
    ]
    for cls, message in cases:
        model = cls()
        before = [np.array(v) for v in jax.tree.leaves(nnx.state(model))]
        with pytest.raises(ValueError, match=message):
            Trainer(model, optax.adam(0.05), loss="mse").restore(tmp_path)
        for a, b in zip(before, jax.tree.leaves(nnx.state(model)), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b))  # checked first: nothing was loaded


def test_a_directory_of_another_run_is_refused_before_training_unless_resumed_or_overwritten(tmp_path):
    x, y = regression_data(16)
    trainer = Trainer(Regressor(), optax.adam(0.05), loss="mse")
    trainer.save(tmp_path / "initial")
    directory = tmp_path / "run"
    first = ModelCheckpoint(directory)
    trainer.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[first])
    # the same callback continuing its own run (Keras's fit(initial_epoch=...)) is not refused
    trainer.fit(x, y, batch_size=8, epochs=3, initial_epoch=2, verbose=0, callbacks=[first])
    assert first._store.steps() == [2, 4, 6]

    trainer.restore(tmp_path / "initial")  # a new run from step 0 into the same directory
    with pytest.raises(FileExistsError, match=r"ModelCheckpoint: .*run already holds checkpoints \[2, 4, 6\] of "
                       r"another run; .* fit\(\.\.\., resume=True\) .* ModelCheckpoint\(\.\.\., overwrite=True\)"):
        trainer.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[ModelCheckpoint(directory)])
    assert trainer.step == 0 and first._store.steps() == [2, 4, 6]  # refused before training

    resumed = ModelCheckpoint(directory)
    trainer.fit(x, y, batch_size=8, epochs=4, verbose=0, resume=True, callbacks=[resumed])
    assert trainer.step == 8 and resumed._store.steps() == [2, 4, 6, 8]

    trainer.restore(tmp_path / "initial")
    replacing = ModelCheckpoint(directory, overwrite=True)
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[replacing])
    assert replacing._store.steps() == [2] and replacing.latest_state()["epoch"] == 1


def test_a_non_finite_state_is_skipped_with_one_warning_and_trainer_save_refuses_it(tmp_path, caplog):
    import logging

    from callbacks import Callback

    class Poison(Callback):  # the second epoch trains from a NaN kernel
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.model.kernel.value = jnp.full((3, 1), jnp.nan)

    x, y = regression_data(16)
    ckpt = ModelCheckpoint(tmp_path / "run", save_freq=1)
    trainer = Trainer(Regressor(), optax.sgd(0.1), loss="mse")
    with caplog.at_level(logging.WARNING, logger="callbacks"):
        trainer.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[Poison(), ckpt])
    assert trainer.step == 8 and ckpt._store.steps() == [1, 2, 3, 4]  # steps 5 to 8 were not saved
    warned = [r.getMessage() for r in caplog.records if r.name == "callbacks"]
    assert len(warned) == 1
    assert "ModelCheckpoint: the state at step 5 holds NaN or infinite values in model/kernel" in warned[0]
    assert ckpt.latest_state()["step"] == 4
    with pytest.raises(ValueError, match=r"Trainer.save: the state at step 8 holds NaN or infinite values in model/kernel"):
        trainer.save(tmp_path / "explicit")
    assert not (tmp_path / "explicit").exists()


def test_trainer_restore_of_damaged_metadata_falls_back_or_names_each_failure(tmp_path):
    import json

    from checkpointing import CheckpointReadError, CheckpointStore

    trainer = Trainer(Regressor(), optax.adam(0.05), loss="mse")
    store = CheckpointStore(tmp_path)
    for step in (5, 12):
        trainer.step = step
        trainer.model.bias.value = jnp.full((1,), float(step))
        store.save(step, trainer.checkpoint_state())
    store.close()
    for step in (12, 5):
        with open(tmp_path / str(step) / "meta" / "metadata", "w") as f:
            f.write(json.dumps({}) if step == 12 else json.dumps({"step": 7, "epoch": 0}))
        if step == 12:
            other = Trainer(Regressor(), optax.adam(0.05), loss="mse")
            with pytest.warns(UserWarning, match=r"checkpoint 12 in .* cannot be used \(it has no 'step'; it has "
                              r"no 'epoch'\); using checkpoint 5 instead"):
                assert other.restore(tmp_path) == 5
            assert other.step == 5 and float(other.model.bias.value[0]) == 5.0
    with pytest.raises(CheckpointReadError, match=r"Trainer.restore: .* holds checkpoints, but none of the checkpoints "
                       r"\[5, 12\] can be used: checkpoint 12 .*no 'step'.*; checkpoint 5 cannot be used \(its "
                       r"metadata says step 7 but it is checkpoint 5\)"):
        Trainer(Regressor(), optax.adam(0.05), loss="mse").restore(tmp_path)


def test_save_best_only_never_counts_a_nan(tmp_path):
    from _standin import StandInTrainer, TinyModel, run_epochs

    ckpt = ModelCheckpoint(tmp_path, monitor="val_loss", save_best_only=True)
    saved = []
    ckpt.save = lambda: saved.append(ckpt.trainer.epoch)
    ckpt.on_train_begin = lambda logs=None: None  # the stand-in writes no checkpoints
    trainer = StandInTrainer(TinyModel())
    run_epochs(trainer, [ckpt], [{"val_loss": v} for v in (float("nan"), 2.0, float("nan"), 1.0)])
    assert saved == [1, 3] and ckpt.best == 1.0
