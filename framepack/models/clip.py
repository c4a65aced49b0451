"""CLIP ViT-L/14 text tower (HunyuanVideo's ``text_encoder_2``), returning the pooled output.

FramePack uses only ``pooler_output``: the final-layer-normed state at the end-of-text
token, which the real config (legacy ``eos_token_id: 2``) locates as the argmax of the ids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError, InputError
from .configuration import ModelConfig
from .encoder_layers import ENCODER_CHECKPOINT_KEYS, encoder_layers, quick_gelu
from .loading import KeyRule, PretrainedModel

_PREFIX = "text_model."
# Configs written before transformers PR #24773 carry eos_token_id 2; their pooling takes argmax(ids).
_LEGACY_EOS_TOKEN_ID = 2


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(ModelConfig):
    """Fields of ``text_encoder_2/config.json``."""

    ignored_keys: ClassVar[frozenset[str]] = frozenset(
        {
            "architectures", "model_type", "attention_dropout", "dropout", "bos_token_id", "pad_token_id",
            "initializer_factor", "initializer_range", "projection_dim", "torch_dtype", "dtype",
            "transformers_version",
        }
    )  # fmt: skip

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    vocab_size: int = 49408
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = _LEGACY_EOS_TOKEN_ID

    def __post_init__(self) -> None:
        if self.hidden_act != "quick_gelu":
            raise ConfigError(f"CLIPTextConfig: hidden_act must be 'quick_gelu', got {self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"CLIPTextConfig: hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads"
            )

    @classmethod
    def preset(cls, name: str) -> CLIPTextConfig:
        """``"clip-vit-large-patch14"`` (HunyuanVideo's text_encoder_2) or ``"tiny"``."""
        presets = {
            "clip-vit-large-patch14": cls(),
            "tiny": cls(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        }
        if name not in presets:
            raise ConfigError(f"CLIPTextConfig: unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]


class CLIPEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(input_ids) + self.position_embedding.weight[: input_ids.shape[1]]


class CLIPTextEncoder(PretrainedModel):
    """``CLIPTextModel``: ``input_ids [B, L] -> pooler_output [B, hidden_size]``.

    No attention mask: FramePack passes none, so padding tokens take part in (causal)
    attention exactly as in the reference.
    """

    config_class = CLIPTextConfig
    weights_name = "model"
    optional_key_prefix = _PREFIX

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = CLIPEmbeddings(config)
        self.layers = encoder_layers(
            config.num_hidden_layers,
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            eps=config.layer_norm_eps,
            activation=quick_gelu,
            causal=True,
        )
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def checkpoint_keys(self) -> Sequence[KeyRule]:
        return ENCODER_CHECKPOINT_KEYS

    def ignored_checkpoint_keys(self, available: set[str]) -> set[str]:
        # Older files persisted the position_ids buffer (0..76); positions are implicit here.
        return {k for k in available if k.removeprefix(self.optional_key_prefix) == "embeddings.position_ids"}

    def _layers(self) -> Iterator[nn.Module]:
        return iter(self.layers)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.ndim != 2 or input_ids.dtype not in (torch.int32, torch.int64):
            raise InputError(
                f"input_ids: expected an integer tensor [B, L], got {input_ids.dtype} {list(input_ids.shape)}"
            )
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise InputError(
                f"input_ids: at most {self.config.max_position_embeddings} tokens, got {input_ids.shape[1]}"
            )
        h = self.embeddings(input_ids)
        for layer in self._layers():
            h = layer(h)
        last = self.final_layer_norm(h)
        if self.config.eos_token_id == _LEGACY_EOS_TOKEN_ID:
            eos_position = input_ids.argmax(dim=-1)
        else:
            eos_position = (input_ids == self.config.eos_token_id).int().argmax(dim=-1)
        return last[torch.arange(last.shape[0], device=last.device), eos_position.to(last.device)]
