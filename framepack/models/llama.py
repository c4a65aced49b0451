"""Llama text encoder (the text part of llava-llama-3-8b), returning one hidden state.

FramePack conditions on ``hidden_states[-3]`` of HunyuanVideo's ``text_encoder``: the output
of layer 29 of 32, before the final norm. Only the layers up to the requested state run.

All 32 layers and the final norm are *built*, so loading the real checkpoint stays strict
and every index (−1 = final-norm output included) works; the unused layers cost no memory
when weights are memory-mapped (``storage="mmap"``) or streamed, because they are never
read. Layers are fetched through ``_layers(stop)``, which iterates the ``LayerStreamer``
while streaming is enabled: ``enable_streaming(device, budget, num_blocks=
encoder.layers_needed(-3))`` streams only the 29 layers FramePack reads. The embedding
table (128320 x 4096, about 1 GiB in fp16) stays on the host while streaming: a prompt
reads about a hundred of its rows, so only those rows ([B, L, D]) go to the device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputError
from .configuration import ModelConfig
from .loading import PretrainedModel
from .streaming import StreamableModel

HIDDEN_STATE_INDEX = -3  # the hidden state FramePack conditions on: layer 29 of 32, before the final norm


@dataclasses.dataclass(frozen=True)
class LlamaConfig(ModelConfig):
    """Fields of ``text_encoder/config.json`` (transformers 4.x names, plus 5.x ``rope_parameters``)."""

    ignored_keys: ClassVar[frozenset[str]] = frozenset(
        {
            "architectures", "model_type", "attention_dropout", "bos_token_id", "eos_token_id",
            "pad_token_id", "initializer_range", "max_position_embeddings", "pretraining_tp",
            "tie_word_embeddings", "torch_dtype", "dtype", "transformers_version", "use_cache",
        }
    )  # fmt: skip

    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None
    vocab_size: int = 128320
    rms_norm_eps: float = 1e-5
    rope_theta: float | None = None
    rope_scaling: Mapping[str, Any] | None = None
    rope_parameters: Mapping[str, Any] | None = None
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False

    def __post_init__(self) -> None:
        if self.hidden_act != "silu":
            raise ConfigError(f"LlamaConfig: hidden_act must be 'silu', got {self.hidden_act!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"LlamaConfig: num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"LlamaConfig: hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads"
            )
        for name in ("rope_scaling", "rope_parameters"):
            rope = getattr(self, name)
            if rope is not None and rope.get("rope_type", rope.get("type", "default")) != "default":
                raise ConfigError(f"LlamaConfig: only the default RoPE is supported, got {name}={dict(rope)}")

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def rope_base(self) -> float:
        """transformers 5.x writes the base into ``rope_parameters``, 4.x into ``rope_theta``."""
        if self.rope_parameters is not None and "rope_theta" in self.rope_parameters:
            return float(self.rope_parameters["rope_theta"])
        return 10000.0 if self.rope_theta is None else float(self.rope_theta)

    @classmethod
    def preset(cls, name: str) -> LlamaConfig:
        """``"llava-llama-3-8b"`` (HunyuanVideo's text_encoder) or ``"tiny"`` (tests, offline demo)."""
        presets = {
            "llava-llama-3-8b": cls(rope_theta=500000.0),
            # Full vocabulary so the real special-token ids (128000…) stay valid.
            "tiny": cls(
                hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, rope_theta=500000.0,
            ),
        }  # fmt: skip
        if name not in presets:
            raise ConfigError(f"LlamaConfig: unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]


class LlamaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Llama flavour: normalise in fp32, cast back, *then* scale.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rope_tables(
    length: int, head_dim: int, base: float, *, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [L, head_dim] of the non-interleaved ("rotate_half") RoPE; angles in fp32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.attention_head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Query head h reads KV head h // (heads / kv_heads): SDPA's grouped-query layout.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class LlamaMLP(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        bias = config.mlp_bias
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaTextEncoder(StreamableModel, PretrainedModel):
    """``LlamaModel`` as a feature extractor: ``(input_ids, attention_mask) -> hidden state [B, L, D]``."""

    config_class = LlamaConfig
    weights_name = "model"

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def ignored_checkpoint_keys(self, available: set[str]) -> set[str]:
        # Checkpoints from older transformers stored the RoPE frequencies; we recompute them.
        return {k for k in available if k.endswith("rotary_emb.inv_freq")}

    def streamable_blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def host_modules(self) -> list[nn.Module]:
        return [self.embed_tokens]

    def _placed_weight(self) -> torch.Tensor:
        return self.norm.weight  # the embedding table stays on the host while streaming

    def layers_needed(self, hidden_state_index: int) -> int:
        """How many decoder layers ``forward(..., hidden_state_index)`` runs (29 of 32 for -3)."""
        return min(self._hidden_state_position(hidden_state_index), self.config.num_hidden_layers)

    def _hidden_state_position(self, hidden_state_index: int) -> int:
        count = self.config.num_hidden_layers + 1
        if not -count <= hidden_state_index < count:
            raise InputError(
                f"hidden_state_index: expected an index into {count} hidden states, got {hidden_state_index}"
            )
        return hidden_state_index % count

    def _layers(self, stop: int) -> Iterator[nn.Module]:
        """The first ``stop`` decoder layers, in order, through the streamer when streaming is on."""
        streamer = self.streamer
        if streamer is None:
            return iter(self.layers[:stop])
        if stop > len(streamer.blocks):
            raise ConfigError(
                f"LlamaTextEncoder: streaming was enabled for the first {len(streamer.blocks)} layers but this "
                f"hidden state needs {stop}; call enable_streaming(..., num_blocks={stop}) (or None for all)"
            )
        return streamer.iterate(0, stop)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        hidden_state_index: int = HIDDEN_STATE_INDEX,
    ) -> torch.Tensor:
        """The hidden state ``hidden_states[hidden_state_index]`` as transformers counts them.

        Index 0 is the embedding output, k (1…N−1) the output of layer k−1, and N (= −1)
        the final-norm output of the last layer.
        """
        if input_ids.ndim != 2 or input_ids.dtype not in (torch.int32, torch.int64):
            raise InputError(
                f"input_ids: expected an integer tensor [B, L], got {input_ids.dtype} {list(input_ids.shape)}"
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise InputError(
                f"attention_mask: expected shape {list(input_ids.shape)} like input_ids, "
                f"got {list(attention_mask.shape)}"
            )
        stop = self._hidden_state_position(hidden_state_index)

        # Look up where the table is (the host, when streaming) and run where the norm is.
        h = self.embed_tokens(input_ids.to(self.embed_tokens.weight.device)).to(self.norm.weight.device)
        length = input_ids.shape[1]
        cos, sin = rope_tables(
            length, self.config.attention_head_dim, self.config.rope_base, device=h.device, dtype=h.dtype
        )
        mask = _causal_padding_mask(attention_mask, length, device=h.device, dtype=h.dtype)
        for layer in self._layers(min(stop, self.config.num_hidden_layers)):
            h = layer(h, cos, sin, mask)
        return self.norm(h) if stop == self.config.num_hidden_layers else h


def _causal_padding_mask(
    attention_mask: torch.Tensor | None, length: int, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Additive mask [B or 1, 1, L, L]; the dtype's minimum rather than −inf keeps fully
    masked rows (left padding) finite, as the reference does."""
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
