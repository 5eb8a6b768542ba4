"""The README's "Checkpoints" example (orbax into an abstract model from nnx.eval_shape) runs."""

import pathlib
import re

import jax
import numpy as np

import nnx

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text[text.index("\n## Checkpoints\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_restores_a_state_with_orbax_into_an_abstract_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_example(), str(README), "exec"), namespace)
    saved, model = namespace["state"], namespace["model"]
    assert model is not namespace["abstract_model"]
    assert (tmp_path / "checkpoints" / "state").is_dir()
    saved_leaves, restored_leaves = jax.tree.leaves(saved), jax.tree.leaves(nnx.state(model))
    assert len(saved_leaves) == len(restored_leaves) > 0
    for a, b in zip(saved_leaves, restored_leaves, strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    model.eval()
    assert model(np.ones((2, 4), np.float32)).shape == (2, 3)
