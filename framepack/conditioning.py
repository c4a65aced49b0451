"""What the transformer is conditioned on, validated once at the boundary.

``Conditioning`` carries the prompt and image embeddings; ``PackedContext`` carries the
clean latents of the packed history (1x, 2x, 4x) with their frame indices. Both check
shapes and dtypes on construction, so a mistake is reported where it was made rather
than as a matmul error deep inside a block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError


def _expect(name: str, tensor: object, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"{name}: expected a tensor {layout}, got {type(tensor).__name__}")
    if tensor.ndim != ndim:
        raise InputError(f"{name}: expected shape {layout}, got {list(tensor.shape)}")
    return tensor


def _expect_float(name: str, tensor: torch.Tensor) -> None:
    if not tensor.is_floating_point():
        raise InputError(f"{name}: expected a floating-point tensor, got {tensor.dtype}")


def _expect_batch(name: str, tensor: torch.Tensor, batch: int, layout: str) -> None:
    if tensor.shape[0] != batch:
        raise InputError(f"{name}: expected batch {batch} ({layout}), got shape {list(tensor.shape)}")


@dataclass(frozen=True)
class Conditioning:
    """Prompt and image conditioning for a batch of B samples.

    text_embeds  [B, L, D] float  Llama features (zero beyond the mask)
    text_mask    [B, L] bool      True for valid text tokens, which form a prefix
    pooled       [B, P] float     CLIP-L pooled text vector
    guidance     [B] float        distilled guidance *scale* (10.0 by default); the model embeds 1000x it,
                                  rounded to its own dtype
    image_embeds [B, N, E] float  SigLIP last hidden state, or None
    """

    text_embeds: torch.Tensor
    text_mask: torch.Tensor
    pooled: torch.Tensor
    guidance: torch.Tensor
    image_embeds: torch.Tensor | None = None

    def __post_init__(self) -> None:
        text = _expect("text_embeds", self.text_embeds, 3, "[B, L, D]")
        _expect_float("text_embeds", text)
        batch, length = text.shape[:2]
        mask = _expect("text_mask", self.text_mask, 2, "[B, L] bool")
        if mask.dtype != torch.bool:
            raise InputError(f"text_mask: expected dtype torch.bool, got {mask.dtype}")
        if tuple(mask.shape) != (batch, length):
            raise InputError(
                f"text_mask: expected shape [{batch}, {length}] to match text_embeds, got {list(mask.shape)}"
            )
        if (mask.long().diff(dim=1) > 0).any():
            raise InputError("text_mask: valid tokens must form a prefix (True... then False...)")
        pooled = _expect("pooled", self.pooled, 2, "[B, P]")
        _expect_float("pooled", pooled)
        _expect_batch("pooled", pooled, batch, "[B, P]")
        guidance = _expect("guidance", self.guidance, 1, "[B]")
        _expect_float("guidance", guidance)
        _expect_batch("guidance", guidance, batch, "[B]")
        if self.image_embeds is not None:
            image = _expect("image_embeds", self.image_embeds, 3, "[B, N, E]")
            _expect_float("image_embeds", image)
            _expect_batch("image_embeds", image, batch, "[B, N, E]")

    @property
    def batch_size(self) -> int:
        return self.text_embeds.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditioning:
        """Move the features (text, pooled, image) to ``device`` and ``dtype``.

        ``text_mask`` and ``guidance`` stay host tensors and keep their dtype: they are read
        on the host (text lengths shape the model's inputs; the guidance value is compared
        with the config), and reading them from a device would wait for it.
        """

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return Conditioning(
            text_embeds=move(self.text_embeds),
            text_mask=self.text_mask.cpu(),
            pooled=move(self.pooled),
            guidance=self.guidance.cpu(),
            image_embeds=move(self.image_embeds),
        )


_CLEAN_GROUPS = (("clean", "clean_indices"), ("clean_2x", "clean_2x_indices"), ("clean_4x", "clean_4x_indices"))


@dataclass(frozen=True)
class PackedContext:
    """Frame indices of the noisy window and the packed clean history around it.

    latent_indices [Bi, T] int64          frame index of each noisy latent frame
    clean / clean_2x / clean_4x [B, C, t, H, W] float  clean latents at full, 2x and 4x compression
    clean_*_indices [Bi, t] int64         their frame indices (before compression)

    Bi is the batch B or 1 (one layout shared by every sample). Any clean group may be
    absent (both tensors None); a group with latents but no indices (or the reverse) is an error.
    """

    latent_indices: torch.Tensor
    clean: torch.Tensor | None = None
    clean_indices: torch.Tensor | None = None
    clean_2x: torch.Tensor | None = None
    clean_2x_indices: torch.Tensor | None = None
    clean_4x: torch.Tensor | None = None
    clean_4x_indices: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _check_indices("latent_indices", self.latent_indices)
        batches = set()
        for latents_name, indices_name in _CLEAN_GROUPS:
            latents, indices = getattr(self, latents_name), getattr(self, indices_name)
            if (latents is None) != (indices is None):
                given, absent = (latents_name, indices_name) if indices is None else (indices_name, latents_name)
                raise InputError(f"PackedContext: {given} is given but {absent} is not; give both or neither")
            if latents is None:
                continue
            _expect(latents_name, latents, 5, "[B, C, t, H, W]")
            _expect_float(latents_name, latents)
            _check_indices(indices_name, indices)
            if indices.shape[1] != latents.shape[2]:
                raise InputError(
                    f"{indices_name}: expected {latents.shape[2]} indices (one per frame of {latents_name} "
                    f"{list(latents.shape)}), got shape {list(indices.shape)}"
                )
            if indices.shape[0] not in (1, latents.shape[0]):
                raise InputError(f"{indices_name}: expected batch 1 or {latents.shape[0]}, got {list(indices.shape)}")
            batches.add(latents.shape[0])
        if len(batches) > 1:
            raise InputError(f"PackedContext: clean groups have different batch sizes {sorted(batches)}")

    @property
    def groups(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """The clean groups present, as (name, latents, indices), in the order 1x, 2x, 4x."""
        return [
            (name, getattr(self, name), getattr(self, idx))
            for name, idx in _CLEAN_GROUPS
            if getattr(self, name) is not None
        ]

    def check_against(self, latents: torch.Tensor) -> None:
        """Raise InputError unless this context fits noisy ``latents`` [B, C, T, H, W]."""
        batch, channels, frames, height, width = latents.shape
        if self.latent_indices.shape[1] != frames:
            raise InputError(
                f"latent_indices: expected {frames} indices for latents {list(latents.shape)}, "
                f"got shape {list(self.latent_indices.shape)}"
            )
        if self.latent_indices.shape[0] not in (1, batch):
            raise InputError(f"latent_indices: expected batch 1 or {batch}, got {list(self.latent_indices.shape)}")
        for name, clean, indices in self.groups:
            if clean.shape[0] != batch or clean.shape[1] != channels or tuple(clean.shape[3:]) != (height, width):
                raise InputError(
                    f"{name}: expected [{batch}, {channels}, t, {height}, {width}] to match latents "
                    f"{list(latents.shape)}, got {list(clean.shape)}"
                )
            if indices.shape[0] not in (1, batch):
                raise InputError(f"{name}_indices: expected batch 1 or {batch}, got {list(indices.shape)}")


def _check_indices(name: str, indices: object) -> None:
    tensor = _expect(name, indices, 2, "[B, T] int64")
    if tensor.dtype != torch.int64:
        raise InputError(f"{name}: expected dtype torch.int64, got {tensor.dtype}")
