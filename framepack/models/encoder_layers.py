"""The pre-LayerNorm transformer layer that CLIP's text tower and SigLIP's vision tower share.

Module names are the checkpoints' (``self_attn.q_proj``, ``mlp.fc1``, ``layer_norm1``…),
which say what each does; the towers keep their layers in ``layers`` where the checkpoints
have ``encoder.layers`` (``ENCODER_CHECKPOINT_KEYS``). The two towers differ only in the MLP
activation and in CLIP's causal attention.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .loading import key_rule

Activation = Callable[[torch.Tensor], torch.Tensor]


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's ``x · sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """SigLIP's ``gelu_pytorch_tanh``."""
    return F.gelu(x, approximate="tanh")


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, *, causal: bool) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: Activation) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class EncoderLayer(nn.Module):
    """``h + attn(LN1(h))``, then ``h + mlp(LN2(h))``."""

    def __init__(self, dim: int, heads: int, hidden: int, *, eps: float, activation: Activation, causal: bool) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = SelfAttention(dim, heads, causal=causal)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, hidden, activation)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.layer_norm1(h))
        return h + self.mlp(self.layer_norm2(h))


def encoder_layers(
    count: int, dim: int, heads: int, hidden: int, *, eps: float, activation: Activation, causal: bool
) -> nn.ModuleList:
    """``count`` encoder layers, run in order by the tower."""
    return nn.ModuleList(
        EncoderLayer(dim, heads, hidden, eps=eps, activation=activation, causal=causal) for _ in range(count)
    )


# Both towers' key table: our ``layers.{i}`` are the checkpoints' ``encoder.layers.{i}``.
ENCODER_CHECKPOINT_KEYS = (key_rule("layers", "encoder.layers"),)
