"""Building blocks of the HunyuanVideo causal 3D VAE: convs, resnets, resamplers, mid block.

Module and parameter names are the checkpoint's (``conv_in.conv.weight``,
``resnets.0.norm1.weight``…) except the attention's output projection, ``out_proj`` here
and ``to_out.0`` there (``HunyuanVideoVAE.checkpoint_keys``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-6


class CausalConv3d(nn.Module):
    """Conv3d behind a replicate pad that looks only backwards in time.

    The pad is ``k//2`` on each side of H and W and ``k-1`` frames in front, none behind,
    so output frame t sees input frames t-k+1..t (the first frame replicated before it).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride)
        half = kernel_size // 2
        self.padding = (half, half, half, half, kernel_size - 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.padding):
            x = F.pad(x, self.padding, mode="replicate")
        return self.conv(x)


def _norm_silu(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    # GroupNorm makes a fresh tensor, so SiLU may overwrite it: one activation copy, not two.
    return F.silu(norm(x), inplace=True)


class ResnetBlock(nn.Module):
    """norm → SiLU → conv, twice, plus a (1×1×1-projected when widths differ) skip."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=_EPS)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=_EPS)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_norm_silu(self.norm1, x))
        h = self.conv2(_norm_silu(self.norm2, h))
        residual = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return h.add_(residual)


class Downsample(nn.Module):
    """Strided causal conv: stride (sT, 2, 2) or (sT, 1, 1); 1 + 2k frames → 1 + k when sT = 2."""

    def __init__(self, channels: int, stride: tuple[int, int, int]):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest upsampling that keeps frame 0 single (1 + k frames → 1 + fT·k), then a causal conv."""

    def __init__(self, channels: int, factor: tuple[int, int, int]):
        super().__init__()
        self.factor = factor
        self.conv = CausalConv3d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fh, fw = self.factor
        b, c, t, h, w = x.shape
        # Nearest upsampling by integer factors is pure copying, so writing each frame
        # straight into the output (instead of interpolate + cat) gives the same numbers.
        out = x.new_empty(b, c, 1 + ft * (t - 1), h * fh, w * fw)
        spatial = x[:, :, :, :, None, :, None].expand(b, c, t, h, fh, w, fw)
        out[:, :, :1] = spatial[:, :, :1].reshape(b, c, 1, h * fh, w * fw)
        if t > 1:
            rest = out[:, :, 1:].view(b, c, t - 1, ft, h * fh, w * fw)
            rest.copy_(spatial[:, :, 1:, None].reshape(b, c, t - 1, 1, h * fh, w * fw).expand_as(rest))
        return self.conv(out)


class FrameCausalAttention(nn.Module):
    """Single-head self-attention over all (t, h, w) tokens; a token sees every token of its own and earlier frames.

    The reference builds an N×N additive mask; attending frame by frame to the keys of
    frames ≤ i is the same softmax without the masked zeros, in O(N·HW) memory instead of O(N²).
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.out_proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frame_tokens = h * w
        # GroupNorm on (B, C, T, H, W) has the same statistics as the reference's norm on (B, C, N).
        normed = self.group_norm(x).flatten(2).transpose(1, 2)
        q = self.to_q(normed).unsqueeze(1)
        k = self.to_k(normed).unsqueeze(1)
        v = self.to_v(normed).unsqueeze(1)
        out = torch.empty_like(q)
        for i in range(t):
            rows = slice(i * frame_tokens, (i + 1) * frame_tokens)
            seen = (i + 1) * frame_tokens
            out[:, :, rows] = F.scaled_dot_product_attention(q[:, :, rows], k[:, :, :seen], v[:, :, :seen])
        out = self.out_proj(out.squeeze(1))
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b, t * frame_tokens, c)
        return (out + tokens).view(b, t, h, w, c).permute(0, 4, 1, 2, 3).contiguous()


class MidBlock(nn.Module):
    """resnet → frame-causal attention (optional) → resnet, at the widest channel count."""

    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([FrameCausalAttention(channels, groups)] if add_attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class _ResnetStage(nn.Module):
    """``layers`` resnets, then the stage's resampler if it has one (named as in the checkpoint)."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(layers)]
        )

    def _resamplers(self) -> nn.ModuleList:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in [*self.resnets, *self._resamplers()]:
            x = layer(x)
        return x


class DownBlock(_ResnetStage):
    def __init__(
        self, in_channels: int, out_channels: int, layers: int, groups: int, stride: tuple[int, int, int] | None
    ):
        super().__init__(in_channels, out_channels, layers, groups)
        self.downsamplers = nn.ModuleList([Downsample(out_channels, stride)] if stride else [])

    def _resamplers(self) -> nn.ModuleList:
        return self.downsamplers


class UpBlock(_ResnetStage):
    def __init__(
        self, in_channels: int, out_channels: int, layers: int, groups: int, factor: tuple[int, int, int] | None
    ):
        super().__init__(in_channels, out_channels, layers, groups)
        self.upsamplers = nn.ModuleList([Upsample(out_channels, factor)] if factor else [])

    def _resamplers(self) -> nn.ModuleList:
        return self.upsamplers


def resample_factors(num_blocks: int, spatial_ratio: int, temporal_ratio: int) -> list[tuple[int, int, int] | None]:
    """Per block (encoder order), the (T, H, W) down factor, or None for a block that keeps its size.

    The first log2(spatial) blocks halve H and W; the log2(temporal) blocks before the last halve T.
    """
    spatial_layers = spatial_ratio.bit_length() - 1
    temporal_layers = temporal_ratio.bit_length() - 1
    factors: list[tuple[int, int, int] | None] = []
    for i in range(num_blocks):
        spatial = i < spatial_layers
        temporal = num_blocks - 1 - temporal_layers <= i < num_blocks - 1
        factors.append(
            (2 if temporal else 1, 2 if spatial else 1, 2 if spatial else 1) if spatial or temporal else None
        )
    return factors


class Encoder(nn.Module):
    """pixels (B, 3, 1+4k, H, W) → posterior parameters (B, 2·latent, 1+k, H/8, W/8) before quant_conv."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        widths: tuple[int, ...],
        layers: int,
        groups: int,
        add_attention: bool,
        factors: list[tuple[int, int, int] | None],
    ):
        super().__init__()
        self.conv_in = CausalConv3d(in_channels, widths[0], 3)
        self.down_blocks = nn.ModuleList(
            [DownBlock(widths[max(i - 1, 0)], widths[i], layers, groups, factors[i]) for i in range(len(widths))]
        )
        self.mid_block = MidBlock(widths[-1], groups, add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=_EPS)
        self.conv_out = CausalConv3d(widths[-1], 2 * latent_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(_norm_silu(self.conv_norm_out, x))


class Decoder(nn.Module):
    """latents (B, latent, 1+k, h, w) after post_quant_conv → pixels (B, 3, 1+4k, 8h, 8w)."""

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        widths: tuple[int, ...],
        layers: int,
        groups: int,
        add_attention: bool,
        factors: list[tuple[int, int, int] | None],
    ):
        super().__init__()
        reversed_widths = widths[::-1]
        self.conv_in = CausalConv3d(latent_channels, reversed_widths[0], 3)
        self.mid_block = MidBlock(reversed_widths[0], groups, add_attention)
        self.up_blocks = nn.ModuleList(
            [
                UpBlock(reversed_widths[max(i - 1, 0)], reversed_widths[i], layers + 1, groups, factors[i])
                for i in range(len(widths))
            ]
        )
        self.conv_norm_out = nn.GroupNorm(groups, widths[0], eps=_EPS)
        self.conv_out = CausalConv3d(widths[0], out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(_norm_silu(self.conv_norm_out, x))
