"""FLOPs of one generation, from the configs and the section plan.

The transformer is counted by hand, kernel by kernel, in the order ``transformer.py`` and
``transformer_blocks.py`` call them (``tests/test_cost_flops.py`` checks every count against
the kernels ``benchmarks/kernel_floor.py`` records from a real call). A matmul of
``[m, k] x [k, n]`` is ``2mkn``; a convolution ``2 x outputs x (in_channels x kernel volume)``;
an attention ``4 x heads x Lq x Lk x head_dim`` (QK^T, then PV). Bias adds, norms and other
element-wise work are not FLOPs here: the time model counts them as bytes (``estimate.py``).

The VAE and the three encoders are counted by ``traced``: the module built on the
``meta`` device runs on ``meta`` tensors under a dispatch mode that counts the same kernels
from their shapes, by the same rules, without computing anything (a 13B model
costs no memory and a fraction of a second); it also counts the bytes their other ops move.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..models.configuration import ModelConfig
from ..models.layers import SINUSOID_DIM
from ..models.packing import context_tokens, noisy_tokens
from ..models.transformer import TransformerConfig

aten = torch.ops.aten


@dataclass(frozen=True)
class Flops:
    """FLOPs split the way their time is modelled: matmuls (and convolutions) and attention."""

    matmul: int = 0
    attention: int = 0
    kernels: int = 0  # kernel launches: each costs a fixed overhead whatever its size

    @property
    def total(self) -> int:
        return self.matmul + self.attention

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.matmul + other.matmul, self.attention + other.attention, self.kernels + other.kernels)

    def __mul__(self, factor: int) -> Flops:
        return Flops(self.matmul * factor, self.attention * factor, self.kernels * factor)


def linear(rows: int, in_features: int, out_features: int) -> Flops:
    return Flops(matmul=2 * rows * in_features * out_features, kernels=1)


def attention(heads: int, queries: int, keys: int, head_dim: int) -> Flops:
    return Flops(attention=4 * heads * queries * keys * head_dim, kernels=1)


def conv(outputs: int, in_channels: int, kernel_volume: int, out_channels: int) -> Flops:
    """``outputs`` output positions of ``out_channels`` each."""
    return Flops(matmul=2 * outputs * out_channels * in_channels * kernel_volume, kernels=1)


@dataclass(frozen=True)
class CallShape:
    """The token counts of one transformer call (batch 1: real CFG's second pass is a second call)."""

    frames: int  # noisy latent frames (the window)
    height: int  # latent pixels
    width: int
    text_tokens: int  # prompt tokens after the template (the refiner's length)
    image_tokens: int  # SigLIP's embeddings joined to the context (0 without an image)
    with_context: bool = True  # the packed clean history (FramePack always has it)

    def noisy(self, config: TransformerConfig) -> int:
        return noisy_tokens(
            self.frames, self.height, self.width, patch_size=config.patch_size, patch_size_t=config.patch_size_t
        )

    def clean(self) -> int:
        return context_tokens(self.height, self.width) if self.with_context else 0

    def image_stream(self, config: TransformerConfig) -> int:
        return self.clean() + self.noisy(config)

    def context_stream(self) -> int:
        return self.image_tokens + self.text_tokens


def _embedder(config: TransformerConfig, in_features: int) -> Flops:
    """An MLPEmbedder on one row: linear_1 then linear_2."""
    return linear(1, in_features, config.inner_dim) + linear(1, config.inner_dim, config.inner_dim)


def block_flops(config: TransformerConfig, shape: CallShape) -> list[Flops]:
    """FLOPs of each block of the stack (double blocks, then single ones) in one call."""
    d, m, heads, hd = config.inner_dim, config.mlp_dim, config.num_attention_heads, config.attention_head_dim
    n_img, n_ctx = shape.image_stream(config), shape.context_stream()
    total = n_img + n_ctx
    double = (
        linear(1, d, 12 * d)  # modulation
        + linear(n_img, d, 3 * d)
        + linear(n_ctx, d, 3 * d)
        + attention(heads, total, total, hd)
        + linear(n_img, d, d)
        + linear(n_ctx, d, d)
        + linear(n_img, d, m)
        + linear(n_img, m, d)
        + linear(n_ctx, d, m)
        + linear(n_ctx, m, d)
    )
    single = (
        linear(1, d, 3 * d)  # modulation
        + linear(total, d, 3 * d + m)
        + attention(heads, total, total, hd)
        + linear(total, d + m, d)
    )
    return [double] * config.num_layers + [single] * config.num_single_layers


def call_flops(config: TransformerConfig, shape: CallShape) -> tuple[Flops, Flops]:
    """(the work every denoising call does around the stack, the block stack itself).

    A cache policy that skips a step skips the stack; the rest runs on every call.
    """
    d, heads, hd = config.inner_dim, config.num_attention_heads, config.attention_head_dim
    n_text, noisy = shape.text_tokens, shape.noisy(config)
    patch_volume = config.patch_size_t * config.patch_size**2
    around = conv(noisy, config.in_channels, patch_volume, d)  # patch_embed
    around += _embedder(config, SINUSOID_DIM) * 2  # timestep_embed, then the refiner's own
    refiner_block = (
        linear(1, d, 2 * d)  # the attention and MLP gates
        + linear(n_text, d, 3 * d)
        + attention(heads, n_text, n_text, hd)
        + linear(n_text, d, d)
        + linear(n_text, d, config.mlp_dim)
        + linear(n_text, config.mlp_dim, d)
    )
    around += refiner_block * config.num_refiner_layers
    around += linear(1, d, 2 * d)  # output_modulation
    around += linear(noisy, d, patch_volume * config.out_channels)  # proj_out
    stack = sum(block_flops(config, shape), Flops())
    return around, stack


def prepare_flops(config: TransformerConfig, shape: CallShape) -> Flops:
    """The step-invariant part of a section (``FramePackTransformer.prepare``), run once per section."""
    from ..models.packing import CONTEXT_FRAMES
    from ..models.transformer_blocks import CleanLatentEmbedder

    d = config.inner_dim
    flops = Flops()
    if shape.with_context:
        for group, frames in CONTEXT_FRAMES.items():
            kt, kh, kw = CleanLatentEmbedder.KERNELS[group]
            outputs = -(-frames // kt) * -(-shape.height // kh) * -(-shape.width // kw)
            flops += conv(outputs, config.in_channels, kt * kh * kw, d)
    if shape.image_tokens:
        flops += linear(shape.image_tokens, config.image_proj_dim, 3 * d) + linear(shape.image_tokens, 3 * d, d)
    flops += linear(shape.text_tokens, config.text_embed_dim, d)  # the refiner's proj_in
    flops += _embedder(config, config.text_embed_dim)  # the refiner's pooled text
    flops += _embedder(config, SINUSOID_DIM)  # guidance
    flops += _embedder(config, config.pooled_projection_dim)
    return flops


# --- everything else: traced on the meta device -------------------------------------------


@dataclass(frozen=True)
class Traced:
    """What a traced call does: FLOPs of its matmuls/convolutions/attentions, bytes its other
    ops read and write (each output counted twice: written, then read by the next op), and
    how many ops it runs (each costs a fixed dispatch overhead)."""

    flops: int
    elementwise_bytes: int
    ops: int

    def __mul__(self, factor: int) -> Traced:
        return Traced(self.flops * factor, self.elementwise_bytes * factor, self.ops * factor)

    def __add__(self, other: Traced) -> Traced:
        return Traced(self.flops + other.flops, self.elementwise_bytes + other.elementwise_bytes, self.ops + other.ops)


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self.bytes = 0
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        schema = func._schema
        if any(r.alias_info is not None for r in schema.returns) and not schema.is_mutable:
            return out  # a view: no kernel runs
        self.ops += 1
        arithmetic = _ARITHMETIC.get(func.overloadpacket)
        if arithmetic is not None:
            self.flops += arithmetic(args, out)
        else:
            self.bytes += 2 * sum(t.numel() * t.element_size() for t in _tensors(out))
        return out


def _matmul(args: tuple[Any, ...], out: Any) -> int:
    a = args[-2]  # mm(a, b), addmm(bias, a, b), bmm(a, b), baddbmm(c, a, b)
    return 2 * out.numel() * a.shape[-1]


def _convolution(args: tuple[Any, ...], out: Any) -> int:
    weight = args[1]
    return 2 * out.numel() * math.prod(weight.shape[1:])


def _attention(args: tuple[Any, ...], out: Any) -> int:
    q, k = args[0], args[1]
    return 4 * math.prod(q.shape[:-1]) * k.shape[-2] * q.shape[-1]


_ARITHMETIC: dict[Any, Callable[[tuple[Any, ...], Any], int]] = {
    aten.mm: _matmul, aten.addmm: _matmul, aten.bmm: _matmul, aten.baddbmm: _matmul,
    aten.convolution: _convolution,
    aten._scaled_dot_product_flash_attention_for_cpu: _attention,
    aten._scaled_dot_product_efficient_attention: _attention,
    aten._scaled_dot_product_flash_attention: _attention,
}  # fmt: skip


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def traced(build: Callable[[], nn.Module], run: Callable[[nn.Module], object]) -> Traced:
    """``run(module)`` with the module built on the meta device: shapes only, nothing computed."""
    with torch.device("meta"):
        module = build().eval()
    with torch.no_grad(), _OpCounter() as counter:
        run(module)
    return Traced(counter.flops, counter.bytes, counter.ops)


@functools.lru_cache(maxsize=64)
def vae_decode_cost(
    config: ModelConfig, dtype: torch.dtype, latent_frames: int, height: int, width: int, tiled: bool
) -> Traced:
    """Decoding ``latent_frames`` latent frames of ``height x width`` latent pixels as the
    pipeline does, in overlapping temporal tiles. Spatial tiles (``tiled``) are not traced one
    by one (a 640 frame is dozens of tiles, minutes of tracing): their overlap is counted as the
    area factor ``(tile / stride)**2`` on the untiled cost, which leaves out that the mid
    block's attention, quadratic in a tile's area, gets cheaper."""
    from ..models.vae import HunyuanVideoVAE, VAETiling

    tiles: list[tuple[int, ...]] = []
    s, r = config.spatial_compression_ratio, config.temporal_compression_ratio

    def record_tile(z: torch.Tensor) -> torch.Tensor:
        # Temporal tiles repeat one shape: each shape is traced once (``_decode_tile_cost``).
        tiles.append(tuple(z.shape))
        b, _, t, h, w = z.shape
        return torch.empty(b, config.out_channels, r * (t - 1) + 1, h * s, w * s, device="meta")

    def run(vae: nn.Module) -> None:
        vae._decode_tile = record_tile  # this meta instance only
        z = torch.empty(1, config.latent_channels, latent_frames, height, width, device="meta")
        for _ in vae.decode_frames(z):
            pass

    untiled = traced(lambda: HunyuanVideoVAE(config).to(dtype), run)
    for shape in tiles:
        untiled = untiled + _decode_tile_cost(config, dtype, shape)
    tiling = VAETiling()
    if not tiled or max(height, width) * config.spatial_compression_ratio <= tiling.tile_sample_min_height:
        return untiled
    overlap = (tiling.tile_sample_min_height / tiling.tile_sample_stride_height) ** 2
    return Traced(int(untiled.flops * overlap), int(untiled.elementwise_bytes * overlap), untiled.ops)


@functools.lru_cache(maxsize=64)
def _decode_tile_cost(config: ModelConfig, dtype: torch.dtype, shape: tuple[int, ...]) -> Traced:
    from ..models.vae import HunyuanVideoVAE

    def run(vae: nn.Module) -> None:
        vae._decode_tile(torch.empty(shape, device="meta", dtype=dtype))

    return traced(lambda: HunyuanVideoVAE(config).to(dtype), run)


@functools.lru_cache(maxsize=64)
def vae_encode_cost(config: ModelConfig, dtype: torch.dtype, height: int, width: int) -> Traced:
    """Encoding one image of ``height x width`` pixels (untiled: one frame is cheap beside the video)."""
    from ..models.vae import HunyuanVideoVAE

    def run(vae: nn.Module) -> None:
        vae.encode(torch.empty(1, config.in_channels, 1, height, width, device="meta"))

    return traced(lambda: HunyuanVideoVAE(config).to(dtype), run)


@functools.lru_cache(maxsize=64)
def text_encoders_cost(
    llama_config: ModelConfig, clip_config: ModelConfig, dtype: torch.dtype, llama_tokens: int
) -> Traced:
    """The Llama encoder on ``llama_tokens`` templated tokens, plus CLIP on its full 77."""
    from ..models.clip import CLIPTextEncoder
    from ..models.llama import LlamaTextEncoder

    def run_llama(llama: nn.Module) -> None:
        llama(torch.zeros(1, llama_tokens, dtype=torch.long, device="meta"))

    def run_clip(clip: nn.Module) -> None:
        clip(torch.zeros(1, clip_config.max_position_embeddings, dtype=torch.long, device="meta"))

    llama = traced(lambda: LlamaTextEncoder(llama_config).to(dtype), run_llama)
    return llama + traced(lambda: CLIPTextEncoder(clip_config).to(dtype), run_clip)


@functools.lru_cache(maxsize=16)
def image_encoder_cost(config: ModelConfig, dtype: torch.dtype) -> Traced:
    from ..models.siglip import SiglipImageEncoder

    def run(encoder: nn.Module) -> None:
        encoder(torch.empty(1, 3, config.image_size, config.image_size, device="meta", dtype=dtype))

    return traced(lambda: SiglipImageEncoder(config).to(dtype), run)
