"""FLOPs of the VAE and the three encoders, by hand from their configs.

Counted per kernel in the order ``vae_blocks.py``, ``vae.py``, ``llama.py``, ``clip.py``,
``siglip.py`` and ``encoder_layers.py`` call them, by ``flops.py``'s rules: a convolution
is ``2 x outputs x in_channels x kernel volume``, a Linear ``2mkn``, an attention
``4 x heads x Lq x Lk x head_dim`` (causal ones computed whole, as SDPA does).
``tests/test_cost_flops.py`` checks every count against a real tiny-model call's kernels.
No model is built: a count costs microseconds.
"""

from __future__ import annotations

import functools

from ..models.clip import CLIPTextConfig
from ..models.llama import HIDDEN_STATE_INDEX, LlamaConfig
from ..models.siglip import SiglipVisionConfig
from ..models.vae import VAEConfig, VAETiling
from ..models.vae_blocks import resample_factors
from .flops import Flops, attention, conv, linear

_CAUSAL_3X3X3 = 27  # kernel volume of every 3-wide causal conv (its replicate pad keeps the size)


def _resnet(c_in: int, c_out: int, positions: int) -> Flops:
    flops = conv(positions, c_in, _CAUSAL_3X3X3, c_out) + conv(positions, c_out, _CAUSAL_3X3X3, c_out)
    return flops + conv(positions, c_in, 1, c_out) if c_in != c_out else flops


def _mid_block(config: VAEConfig, channels: int, t: int, h: int, w: int) -> Flops:
    positions = t * h * w
    flops = _resnet(channels, channels, positions) * 2
    if config.mid_block_add_attention:  # single head; frame i's queries see frames 0..i
        flops += linear(positions, channels, channels) * 4  # q, k, v, out
        for i in range(t):
            flops += attention(1, h * w, (i + 1) * h * w, channels)
    return flops


def _factors(config: VAEConfig) -> list[tuple[int, int, int] | None]:
    return resample_factors(
        len(config.block_out_channels), config.spatial_compression_ratio, config.temporal_compression_ratio
    )


def decode_tile_flops(config: VAEConfig, t: int, h: int, w: int) -> Flops:
    """``HunyuanVideoVAE._decode_tile`` on latents of ``t`` frames of ``h x w``."""
    widths = config.block_out_channels[::-1]
    latent = config.latent_channels
    flops = conv(t * h * w, latent, 1, latent)  # post_quant_conv
    flops += conv(t * h * w, latent, _CAUSAL_3X3X3, widths[0])  # conv_in
    flops += _mid_block(config, widths[0], t, h, w)
    for i, factor in enumerate(_factors(config)):
        for layer in range(config.layers_per_block + 1):
            flops += _resnet(widths[max(i - 1, 0)] if layer == 0 else widths[i], widths[i], t * h * w)
        if factor is not None:  # nearest upsampling keeps frame 0 single, then a conv at the new size
            t, h, w = 1 + factor[0] * (t - 1), h * factor[1], w * factor[2]
            flops += conv(t * h * w, widths[i], _CAUSAL_3X3X3, widths[i])
    return flops + conv(t * h * w, widths[-1], _CAUSAL_3X3X3, config.out_channels)  # conv_out


def decode_tile_frames(config: VAEConfig, latent_frames: int) -> list[int]:
    """Latent frames of each temporal tile ``decode_frames`` runs (``vae_tiling.temporal_tiled``:
    a tile from every stride, each one frame longer than the tile, the last ones cut short)."""
    tiling, r = VAETiling(), config.temporal_compression_ratio
    tile, stride = tiling.tile_sample_min_num_frames // r, tiling.tile_sample_stride_num_frames // r
    if latent_frames <= tile:
        return [latent_frames]
    return [min(tile + 1, latent_frames - start) for start in range(0, latent_frames, stride)]


@functools.lru_cache(maxsize=256)
def decode_tiles_flops(
    config: VAEConfig, latent_frames: int, height: int, width: int, tiled: bool
) -> tuple[tuple[int, Flops], ...]:
    """(latent frames, FLOPs) of each temporal tile of decoding ``latent_frames`` frames of
    ``height x width`` latent pixels as the pipeline does. Spatial tiles (``tiled``) are not
    counted one by one: their overlap is the area factor ``(tile / stride)**2`` on each
    untiled count, which leaves out that the mid block's attention, quadratic in a tile's
    area, gets cheaper."""
    tiling = VAETiling()
    overlap = (tiling.tile_sample_min_height / tiling.tile_sample_stride_height) ** 2
    tiles = []
    for frames in decode_tile_frames(config, latent_frames):
        flops = decode_tile_flops(config, frames, height, width)
        if spatially_tiled(config, height, width, tiled):
            flops = Flops(int(flops.matmul * overlap), int(flops.attention * overlap), flops.kernels)
        tiles.append((frames, flops))
    return tuple(tiles)


def spatially_tiled(config: VAEConfig, height: int, width: int, tiled: bool) -> bool:
    """Whether a decode of ``height x width`` latent pixels with tiling ``tiled`` cuts its frames into spatial tiles."""
    return tiled and max(height, width) * config.spatial_compression_ratio > VAETiling().tile_sample_min_height


def _strided(size: int, stride: int) -> int:
    """Outputs of a 3-wide conv with one pad each side (or two in front, in time) at ``stride``."""
    return (size - 1) // stride + 1


@functools.lru_cache(maxsize=64)
def vae_encode_flops(config: VAEConfig, height: int, width: int) -> Flops:
    """Encoding one image of ``height x width`` pixels (untiled: one frame is cheap beside the video)."""
    widths = config.block_out_channels
    t, h, w = 1, height, width
    flops = conv(t * h * w, config.in_channels, _CAUSAL_3X3X3, widths[0])  # conv_in
    for i, factor in enumerate(_factors(config)):
        for layer in range(config.layers_per_block):
            flops += _resnet(widths[max(i - 1, 0)] if layer == 0 else widths[i], widths[i], t * h * w)
        if factor is not None:
            t, h, w = _strided(t, factor[0]), _strided(h, factor[1]), _strided(w, factor[2])
            flops += conv(t * h * w, widths[i], _CAUSAL_3X3X3, widths[i])
    flops += _mid_block(config, widths[-1], t, h, w)
    latent2 = 2 * config.latent_channels
    return flops + conv(t * h * w, widths[-1], _CAUSAL_3X3X3, latent2) + conv(t * h * w, latent2, 1, latent2)


def _encoder_layers(layers: int, tokens: int, dim: int, heads: int, hidden: int) -> Flops:
    """``encoder_layers.EncoderLayer`` (CLIP's and SigLIP's): q, k, v, out, attention, fc1, fc2."""
    layer = linear(tokens, dim, dim) * 4 + attention(heads, tokens, tokens, dim // heads)
    return (layer + linear(tokens, dim, hidden) + linear(tokens, hidden, dim)) * layers


@functools.lru_cache(maxsize=64)
def text_encoders_flops(llama: LlamaConfig, clip: CLIPTextConfig, llama_tokens: int) -> Flops:
    """The Llama encoder on ``llama_tokens`` templated tokens up to FramePack's hidden state,
    plus CLIP on its full ``max_position_embeddings``."""
    d, hd, n = llama.hidden_size, llama.attention_head_dim, llama_tokens
    q, kv = llama.num_attention_heads * hd, llama.num_key_value_heads * hd
    layer = linear(n, d, q) + linear(n, d, kv) * 2 + attention(llama.num_attention_heads, n, n, hd)
    layer += linear(n, q, d) + linear(n, d, llama.intermediate_size) * 2 + linear(n, llama.intermediate_size, d)
    layers = min(HIDDEN_STATE_INDEX % (llama.num_hidden_layers + 1), llama.num_hidden_layers)
    tokens = clip.max_position_embeddings
    return layer * layers + _encoder_layers(
        clip.num_hidden_layers, tokens, clip.hidden_size, clip.num_attention_heads, clip.intermediate_size
    )


@functools.lru_cache(maxsize=16)
def image_encoder_flops(config: SiglipVisionConfig) -> Flops:
    """SigLIP on one image: the patch convolution, then its layers."""
    n = config.num_patches
    patches = conv(n, config.num_channels, config.patch_size**2, config.hidden_size)
    return patches + _encoder_layers(
        config.num_hidden_layers, n, config.hidden_size, config.num_attention_heads, config.intermediate_size
    )
