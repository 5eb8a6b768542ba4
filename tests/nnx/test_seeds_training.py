"""Seed 003 examples that combine layers and transforms: the TransformerBlock and the training
loops (section 6), run with ``import nnx`` (only the allowed edits)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnx


def test_seed003_transformer_block():
    class TransformerBlock(nnx.Module):
        def __init__(self, d_model: int, n_heads: int, rngs: nnx.Rngs):
            self.attention = nnx.MultiHeadAttention(
                num_heads=n_heads,
                in_features=d_model,
                qkv_features=d_model,
                out_features=d_model,
                decode=False,
                rngs=rngs
            )
            self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
            self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)

            self.mlp = nnx.Sequential([
                nnx.Linear(d_model, 4 * d_model, rngs=rngs),
                lambda x: nnx.gelu(x),
                nnx.Linear(4 * d_model, d_model, rngs=rngs),
            ])

        def __call__(self, x):
            # Self-attention with residual
            attn_out = self.attention(x)
            x = x + attn_out
            x = self.ln1(x)

            # MLP with residual
            mlp_out = self.mlp(x)
            x = x + mlp_out
            x = self.ln2(x)

            return x

    block = TransformerBlock(8, 2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 8))
    y = block(x)
    assert y.shape == (2, 5, 8)
    # LayerNorm output: zero mean, unit variance over features.
    np.testing.assert_allclose(np.asarray(y).mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y).var(-1), 1.0, rtol=1e-3)
    assert block.mlp.layers[0].kernel.shape == (8, 32)


class MLP(nnx.Module):  # seed 003 section 2
    def __init__(self, hidden_dim: int, out_dim: int, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(784, hidden_dim, rngs=rngs)
        self.linear2 = nnx.Linear(hidden_dim, out_dim, rngs=rngs)

    def __call__(self, x, train: bool = True):
        x = self.linear1(x)
        x = nnx.relu(x)
        x = self.linear2(x)
        return x


def _batches(n: int):
    rng = np.random.default_rng(0)
    for _ in range(n):
        yield {
            "image": jnp.asarray(rng.normal(size=(8, 784)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, size=(8,))),
        }


def test_seed003_basic_training_loop():
    # Model
    model = MLP(128, 10, rngs=nnx.Rngs(0))

    # Optimizer (NNX style)
    optimizer = nnx.Optimizer(model, optax.adam(1e-3))

    # Training step with JIT
    @nnx.jit
    def train_step(optimizer, batch):
        def loss_fn(model):
            logits = model(batch['image'])
            loss = optax.softmax_cross_entropy_with_integer_labels(
                logits, batch['label']
            ).mean()
            return loss

        loss, grads = nnx.value_and_grad(loss_fn)(optimizer.model)
        optimizer.update(grads)
        return loss

    dataloader = list(_batches(1))  # one fixed batch, so the loss must fall
    losses = []
    for epoch in range(10):  # noqa: B007 - seed code as written
        for batch in dataloader:
            loss = train_step(optimizer, batch)
            losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert int(optimizer.step.value) == 10


def test_seed003_training_with_lr_schedule_and_aux_metrics():
    model = MLP(128, 10, rngs=nnx.Rngs(0))
    # Learning rate schedule
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=1e-3,
        warmup_steps=1000,
        decay_steps=10000,
        end_value=1e-5
    )

    # Optimizer with weight decay
    tx = optax.adamw(
        learning_rate=schedule,
        weight_decay=0.01
    )

    optimizer = nnx.Optimizer(model, tx)

    # Training step with metrics
    @nnx.jit
    def train_step(optimizer, batch):
        def loss_fn(model):
            logits = model(batch['image'], train=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(
                logits, batch['label']
            ).mean()

            # L2 regularization
            l2_loss = 0.01 * sum(
                jnp.sum(p ** 2) for p in jax.tree.leaves(nnx.state(model))
            )
            return loss + l2_loss, {'ce_loss': loss, 'l2_loss': l2_loss}

        (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(optimizer.model)
        optimizer.update(grads)
        return loss, metrics

    batch = next(_batches(1))
    kernel = np.asarray(model.linear1.kernel.value)
    loss, metrics = train_step(optimizer, batch)
    l2 = 0.01 * sum(float(jnp.sum(p ** 2)) for p in jax.tree.leaves(nnx.state(model)))
    assert set(metrics) == {"ce_loss", "l2_loss"}
    assert abs(float(loss) - float(metrics["ce_loss"]) - float(metrics["l2_loss"])) < 1e-5
    assert float(metrics["l2_loss"]) > 0 and abs(float(metrics["l2_loss"]) - l2) / l2 < 1e-2
    # The schedule starts at 0: the first step leaves the parameters unchanged.
    np.testing.assert_allclose(model.linear1.kernel.value, kernel)
    train_step(optimizer, batch)
    assert not np.allclose(model.linear1.kernel.value, kernel)
