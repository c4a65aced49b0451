"""FLOPs of one generation, from the configs and the section plan.

The transformer is counted by hand, kernel by kernel, in the order ``transformer.py`` and
``transformer_blocks.py`` call them (``tests/test_cost_flops.py`` checks every count against
the kernels ``benchmarks/kernel_floor.py`` records from a real call). A matmul of
``[m, k] x [k, n]`` is ``2mkn``; a convolution ``2 x outputs x (in_channels x kernel volume)``;
an attention ``4 x heads x Lq x Lk x head_dim`` (QK^T, then PV). Bias adds, norms and other
element-wise work are not FLOPs here: the time model counts them as bytes (``estimate.py``).

The VAE and the three encoders are counted by hand too, per convolution, Linear and
attention, from their configs (``vae_flops.py``); ``tests/test_cost_flops.py`` checks them
against the kernels of real tiny-model calls the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.layers import SINUSOID_DIM
from ..models.packing import context_tokens, noisy_tokens
from ..models.transformer import TransformerConfig


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
