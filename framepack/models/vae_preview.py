"""Live previews: a linear latent → RGB map, cheap enough to run at every sampling step."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

# Rows: the 16 latent channels; columns: R, G, B. Applied to *scaled* latents (FramePack's
# vae_decode_fake; the factors are credited to ComfyUI).
LATENT_RGB_FACTORS = (
    (-0.0395, -0.0331, 0.0445), (0.0696, 0.0795, 0.0518), (0.0135, -0.0945, -0.0282), (0.0108, -0.0250, -0.0765),
    (-0.0209, 0.0032, 0.0224), (-0.0804, -0.0254, -0.0639), (-0.0991, 0.0271, -0.0669), (-0.0646, -0.0422, -0.0400),
    (-0.0696, -0.0595, -0.0894), (-0.0799, -0.0208, -0.0375), (0.1166, 0.1627, 0.0962), (0.1165, 0.0432, 0.0407),
    (-0.2315, -0.1920, -0.1355), (-0.0270, 0.0401, -0.0821), (-0.0616, -0.0997, -0.0727), (0.0249, -0.0469, -0.1703),
)  # fmt: skip
LATENT_RGB_BIAS = (0.0259, -0.0192, -0.0761)


def decode_preview(latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents [B, 16, T, h, w] → uint8 RGB frames [B, T, h, w, 3] at latent resolution.

    ``clamp(latents · W + b, 0, 1) · 255`` truncated to uint8, as the reference app does.
    (The app then lays a batch out as one image ``(B·h, T·w, 3)``; that is a display choice
    left to the caller: ``frames.permute(0, 2, 1, 3, 4).reshape(B * h, T * w, 3)``.)
    """
    if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[1] != len(LATENT_RGB_FACTORS):
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise InputError(f"decode_preview expects scaled latents [B, 16, T, h, w]; got {got}")
    dtype = latents.dtype if latents.is_floating_point() else torch.float32
    weight = torch.tensor(LATENT_RGB_FACTORS, dtype=dtype, device=latents.device).t()[:, :, None, None, None]
    bias = torch.tensor(LATENT_RGB_BIAS, dtype=dtype, device=latents.device)
    rgb = F.conv3d(latents.to(dtype), weight, bias).clamp_(0.0, 1.0)
    return (rgb * 255.0).to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()
