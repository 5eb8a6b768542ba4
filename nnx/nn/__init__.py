"""Layers, activations, pooling and initializers; everything listed in ``__all__`` is also
re-exported at the top of ``nnx``."""

from nnx.nn import initializers
from nnx.nn.activations import *
from nnx.nn.activations import __all__ as _activations_all
from nnx.nn.attention import (
    MultiHeadAttention,
    combine_masks,
    dot_product_attention,
    dot_product_attention_weights,
    make_attention_mask,
    make_causal_mask,
)
from nnx.nn.conv import Conv, ConvTranspose
from nnx.nn.initializers import Initializer
from nnx.nn.linear import Einsum, Embed, Linear, LinearGeneral
from nnx.nn.lora import LoRA, LoRALinear
from nnx.nn.normalization import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from nnx.nn.pooling import avg_pool, max_pool, min_pool, pool
from nnx.nn.recurrent import (
    RNN,
    Bidirectional,
    GRUCell,
    LSTMCell,
    OptimizedLSTMCell,
    RNNCellBase,
    SimpleCell,
)
from nnx.nn.sequential import Sequential
from nnx.nn.stochastic import Dropout
from nnx.nn.weight_norm import SpectralNorm, WeightNorm

__all__ = [
    "initializers", "Initializer",
    "Linear", "LinearGeneral", "Einsum", "Embed",
    "Conv", "ConvTranspose",
    "BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm",
    "Dropout",
    "LoRA", "LoRALinear",
    "Sequential",
    "pool", "avg_pool", "max_pool", "min_pool",
    *_activations_all,
    "MultiHeadAttention", "dot_product_attention", "dot_product_attention_weights",
    "make_attention_mask", "make_causal_mask", "combine_masks",
    "RNNCellBase", "LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell", "RNN",
    "Bidirectional",
    "SpectralNorm", "WeightNorm",
]
