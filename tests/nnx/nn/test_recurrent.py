import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jitted import build, jit_call

import nnx
from nnx.nn.recurrent import (
    RNN,
    Bidirectional,
    GRUCell,
    LSTMCell,
    OptimizedLSTMCell,
    SimpleCell,
)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _np(p):
    return np.asarray(p.value, np.float64)


def _lstm_reference(cell, carry, x):
    c, h = (np.asarray(a, np.float64) for a in carry)
    x = np.asarray(x, np.float64)

    def gate(i_layer, h_layer):
        return x @ _np(i_layer.kernel) + h @ _np(h_layer.kernel) + _np(h_layer.bias)

    i = _sigmoid(gate(cell.ii, cell.hi))
    f = _sigmoid(gate(cell.if_, cell.hf))
    g = np.tanh(gate(cell.ig, cell.hg))
    o = _sigmoid(gate(cell.io, cell.ho))
    new_c = f * c + i * g
    new_h = o * np.tanh(new_c)
    return (new_c, new_h), new_h


def _data(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_lstm_cell_matches_gate_equations():
    cell = build(lambda: LSTMCell(3, 4, rngs=nnx.Rngs(0)))
    x = _data((2, 3))
    carry = (_data((2, 4), 1), _data((2, 4), 2))
    (c, h), out = jit_call(cell, carry, x)
    (ec, eh), _ = _lstm_reference(cell, carry, x)
    np.testing.assert_allclose(c, ec, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, eh, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out, h)
    zero_c, zero_h = cell.initialize_carry((2, 3))
    assert zero_c.shape == zero_h.shape == (2, 4) and not np.any(zero_c)
    assert cell.num_feature_axes == 1


def test_optimized_lstm_cell_matches_gate_equations():
    cell = build(lambda: OptimizedLSTMCell(3, 4, rngs=nnx.Rngs(0)))
    assert cell.dense_i.kernel.shape == (3, 16) and cell.dense_h.kernel.shape == (4, 16)
    x = _data((2, 3))
    c0, h0 = _data((2, 4), 1).astype(np.float64), _data((2, 4), 2).astype(np.float64)
    (c, h), _ = jit_call(cell, (c0.astype(np.float32), h0.astype(np.float32)), x)
    y = x @ _np(cell.dense_i.kernel) + h0 @ _np(cell.dense_h.kernel) + _np(cell.dense_h.bias)
    i, f, g, o = np.split(y, 4, axis=-1)
    ec = _sigmoid(f) * c0 + _sigmoid(i) * np.tanh(g)
    eh = _sigmoid(o) * np.tanh(ec)
    np.testing.assert_allclose(c, ec, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, eh, rtol=1e-5, atol=1e-5)


def test_gru_and_simple_cells_match_equations():
    gru = build(lambda: GRUCell(3, 4, rngs=nnx.Rngs(0)))
    x, h0 = _data((2, 3)), _data((2, 4), 1)
    xd, hd = x.astype(np.float64), h0.astype(np.float64)
    new_h, out = jit_call(gru, h0, x)
    assert gru.dense_i.kernel.shape == (3, 12) and gru.dense_i.bias.shape == (12,)
    assert gru.dense_h.kernel.shape == (4, 12) and gru.dense_h.bias is None
    x_r, x_z, x_n = np.split(xd @ _np(gru.dense_i.kernel) + _np(gru.dense_i.bias), 3, axis=-1)
    h_r, h_z, h_n = np.split(hd @ _np(gru.dense_h.kernel), 3, axis=-1)
    r, z = _sigmoid(x_r + h_r), _sigmoid(x_z + h_z)
    n = np.tanh(x_n + r * h_n)
    np.testing.assert_allclose(new_h, (1 - z) * n + z * hd, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out, new_h)

    simple = build(lambda: SimpleCell(3, 4, rngs=nnx.Rngs(1)))
    new_h, _ = jit_call(simple, h0, x)
    expected = np.tanh(
        xd @ _np(simple.dense_i.kernel) + _np(simple.dense_i.bias) + hd @ _np(simple.dense_h.kernel)
    )
    np.testing.assert_allclose(new_h, expected, rtol=1e-5, atol=1e-5)


def test_cell_wrong_feature_size_names_layer_and_sizes():
    cell = build(lambda: GRUCell(3, 4, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"GRUCell expected inputs with 3 features .* got 5"):
        cell(jnp.zeros((2, 4)), jnp.zeros((2, 5)))


def test_rnn_matches_python_loop_and_returns_carry():
    cell = build(lambda: LSTMCell(3, 4, rngs=nnx.Rngs(0)))
    rnn = RNN(cell, return_carry=True)
    xs = _data((2, 5, 3))
    (c, h), ys = jit_call(rnn, xs)
    carry = cell.initialize_carry((2, 3))
    expected = []
    for t in range(5):
        carry, y = _lstm_reference(cell, carry, xs[:, t])
        expected.append(y)
    assert ys.shape == (2, 5, 4)
    np.testing.assert_allclose(ys, np.stack(expected, axis=1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h, carry[1], rtol=1e-4, atol=1e-5)


def test_rnn_seq_lengths_reverse_and_time_major():
    cell = build(lambda: SimpleCell(2, 3, rngs=nnx.Rngs(0)))
    xs = _data((2, 4, 2))
    lengths = np.array([4, 2])

    def loop(x_seq):
        h = np.zeros((3,))
        outs = []
        for x in x_seq.astype(np.float64):
            h = np.tanh(
                x @ _np(cell.dense_i.kernel) + _np(cell.dense_i.bias) + h @ _np(cell.dense_h.kernel)
            )
            outs.append(h)
        return h, outs

    carry, ys = jit_call(
        RNN(cell), xs, seq_lengths=lengths, reverse=True, keep_order=True, return_carry=True
    )
    for b, n in enumerate(lengths):
        h, outs = loop(xs[b, :n][::-1])
        np.testing.assert_allclose(carry[b], h, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ys[b, :n], np.stack(outs[::-1]), rtol=1e-5, atol=1e-5)
    tm = jit_call(RNN(cell, time_major=True), np.swapaxes(xs, 0, 1))
    bm = jit_call(RNN(cell), xs)
    np.testing.assert_allclose(np.swapaxes(tm, 0, 1), bm, rtol=1e-6)


class CountingCell(nnx.Module):
    """A cell that counts its calls in a custom Variable."""

    def __init__(self):
        self.in_features = 1
        self.hidden_features = 1
        self.calls = nnx.BatchStat(jnp.array(0))

    @property
    def num_feature_axes(self):
        return 1

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape[:-1] + (1,))

    def __call__(self, carry, x):
        self.calls.value = self.calls.value + 1
        carry = carry + x
        return carry, carry


def test_rnn_writes_back_cell_state_updates():
    cell = CountingCell()
    calls = cell.calls
    ys = RNN(cell)(jnp.ones((2, 6, 1)))
    assert cell.calls is calls
    assert int(cell.calls.value) == 6
    np.testing.assert_allclose(ys[0, :, 0], np.arange(1, 7))


def test_bidirectional_concatenates_forward_and_backward():
    fwd = build(lambda: GRUCell(2, 3, rngs=nnx.Rngs(0)))
    bwd = build(lambda: GRUCell(2, 3, rngs=nnx.Rngs(1)))
    bi = Bidirectional(RNN(fwd), RNN(bwd), return_carry=True)
    xs = _data((2, 4, 2))
    (carry_f, carry_b), ys = jit_call(bi, xs)
    assert ys.shape == (2, 4, 6)
    np.testing.assert_allclose(ys[..., :3], jit_call(RNN(fwd), xs), rtol=1e-6)
    backward = jit_call(RNN(bwd), xs[:, ::-1])
    np.testing.assert_allclose(ys[..., 3:], backward[:, ::-1], rtol=1e-6)
    np.testing.assert_allclose(carry_b, backward[:, -1], rtol=1e-6)
    np.testing.assert_allclose(carry_f, ys[:, -1, :3], rtol=1e-6)


def test_half_precision_recurrent_kernels_are_orthogonal():
    cell = LSTMCell(3, 4, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    kernel = cell.hi.kernel.value
    assert kernel.dtype == jnp.bfloat16
    k = np.asarray(kernel, np.float32)
    np.testing.assert_allclose(k.T @ k, np.eye(4), atol=2e-2)
    gru = GRUCell(3, 4, param_dtype=jnp.float16, rngs=nnx.Rngs(0))
    assert gru.dense_h.kernel.dtype == jnp.float16
    (c, h), y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3), jnp.bfloat16))
    assert y.dtype == jnp.bfloat16


def test_initialize_carry_initializer_and_rngs():
    cell = LSTMCell(3, 4, rngs=nnx.Rngs(0))
    c, h = cell.initialize_carry((2, 3), carry_init=nnx.initializers.ones)
    np.testing.assert_array_equal(c, np.ones((2, 4)))
    np.testing.assert_array_equal(h, np.ones((2, 4)))
    normal = nnx.initializers.normal(1.0)
    rngs = nnx.Rngs(carry=3)
    c1, h1 = cell.initialize_carry((2, 3), rngs, carry_init=normal)
    assert not np.array_equal(c1, h1)
    np.testing.assert_array_equal(
        c1, normal(jax.random.fold_in(jax.random.key(3), 0), (2, 4), jnp.float32)
    )
    with pytest.warns(DeprecationWarning, match="keep_rngs is deprecated"):
        kept = GRUCell(3, 4, keep_rngs=True, rngs=nnx.Rngs(0, carry=1))
    assert isinstance(kept.rngs, nnx.RngStream)
    assert kept.initialize_carry((1, 3), carry_init=normal).shape == (1, 4)


def test_cell_metadata_keywords():
    lstm = LSTMCell(3, 4, kernel_metadata={"tag": "k"}, recurrent_kernel_metadata={"tag": "r"},
                    bias_metadata={"tag": "b"}, rngs=nnx.Rngs(0))
    assert lstm.ii.kernel.get_metadata("tag") == "k"
    assert lstm.hf.kernel.get_metadata("tag") == "r" and lstm.ho.bias.get_metadata("tag") == "b"
    gru = GRUCell(3, 4, bias_metadata={"tag": "b"}, rngs=nnx.Rngs(0))
    assert gru.dense_i.bias.get_metadata("tag") == "b" and gru.dense_h.bias is None


def test_simple_cell_residual():
    cell = SimpleCell(2, 2, residual=True, rngs=nnx.Rngs(0))
    x, h = _data((1, 2)), _data((1, 2), 1)
    new_h, _ = cell(h, x)
    expected = np.tanh(
        x @ _np(cell.dense_i.kernel) + _np(cell.dense_i.bias) + h @ _np(cell.dense_h.kernel) + h
    )
    np.testing.assert_allclose(new_h, expected, rtol=1e-5, atol=1e-6)


class _DropoutCell(nnx.Module):
    """A cell whose output is its input through a Dropout of its own stream."""

    def __init__(self, rngs):
        self.dropout = nnx.Dropout(0.5, rng_collection="noise", rngs=rngs)

    @property
    def num_feature_axes(self):
        return 1

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape)

    def __call__(self, carry, x):
        y = self.dropout(x)
        return carry, y


def test_rnn_broadcast_rngs_gives_one_mask_per_sequence():
    x = jnp.ones((1, 5, 16))
    cell = _DropoutCell(nnx.Rngs(noise=0))
    fixed = RNN(cell, broadcast_rngs="noise")(x)
    assert int(cell.dropout.rngs.count.value) == 1
    np.testing.assert_array_equal(fixed[0], np.broadcast_to(fixed[0, :1], (5, 16)))
    varying = RNN(cell)(x)
    assert int(cell.dropout.rngs.count.value) == 6
    assert not np.array_equal(varying[0, 0], varying[0, 1])


def test_rnn_carry_stream():
    cell = LSTMCell(3, 4, carry_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0))
    rnn = RNN(cell, return_carry=True)
    assert isinstance(rnn.rngs, nnx.RngStream)
    (c1, _), _ = rnn(jnp.zeros((1, 2, 3)))
    (c2, _), _ = rnn(jnp.zeros((1, 2, 3)))
    assert not np.array_equal(c1, c2)  # each call draws new carry keys
    assert RNN(cell, rngs=False).rngs is None
    with pytest.raises(TypeError, match="RNN: rngs must be True, False"):
        RNN(cell, rngs=3)
