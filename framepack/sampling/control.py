"""What changes from section to section: the prompt (a schedule) and the start-frame slot (keyframes).

Everything here is indexed by a section's place in the *video* (``SectionLayout.video_index``,
0 = the video's first section), not by generation order: the inverted loop generates the
video's last section first, yet a schedule's first prompt belongs to the video's start.

A ``SectionControl`` holds each distinct input once (every prompt encoded once, every keyframe
encoded once) and, per section, which of them it gets. With no control, or one that names
nothing for a section, the section is conditioned exactly as without it (the same tensors,
no arithmetic), so a one-prompt schedule is bit-identical to a plain prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..conditioning import Conditioning
from ..errors import InputError


@dataclass(frozen=True)
class SectionText:
    """One encoded prompt: the text parts of a ``Conditioning``.

    text_embeds [B, L, D] float, text_mask [B, L] bool (a prefix), pooled [B, P] float
    """

    text_embeds: torch.Tensor
    text_mask: torch.Tensor
    pooled: torch.Tensor


@dataclass(frozen=True)
class TextBlend:
    """A section's prompt: ``texts[first]`` moved toward ``texts[second]`` by ``weight`` in [0, 1].

    Weight 0 is ``texts[first]`` itself. Otherwise text embeddings and pooled vectors are
    interpolated linearly, and the mask is the union of both masks (each is a prefix, so the
    union is the longer one): the zero rows past the shorter prompt blend in as zeros.
    """

    first: int
    second: int = 0
    weight: float = 0.0


@dataclass(frozen=True)
class SectionControl:
    """Per-section inputs of one video.

    texts          the distinct prompts, each encoded once
    text_of        per video section, the prompt it gets; empty: the conditioning's own text everywhere
    anchors        the distinct keyframe latents, each [B, 16, 1, h, w] like the start latent
    anchor_embeds  per anchor, image embeddings [B, N, E] that replace the section's, or None (keep them)
    anchor_of      per video section, the anchor in its start-frame context slot, or None (the start
                   latent); empty: the start latent everywhere
    """

    texts: tuple[SectionText, ...] = ()
    text_of: tuple[TextBlend, ...] = ()
    anchors: tuple[torch.Tensor, ...] = ()
    anchor_embeds: tuple[torch.Tensor | None, ...] = ()
    anchor_of: tuple[int | None, ...] = ()

    def check(self, num_sections: int) -> None:
        """Raise InputError unless every per-section list covers ``num_sections`` sections and
        names only inputs that exist."""
        for name, per_section in (("text_of", self.text_of), ("anchor_of", self.anchor_of)):
            if per_section and len(per_section) != num_sections:
                raise InputError(
                    f"SectionControl.{name}: expected one entry per section ({num_sections}), got {len(per_section)}"
                )
        for blend in self.text_of:
            for index in (blend.first, blend.second):
                if not 0 <= index < len(self.texts):
                    raise InputError(f"SectionControl.text_of: prompt {index} named, but {len(self.texts)} given")
            if not 0.0 <= blend.weight <= 1.0:
                raise InputError(f"SectionControl.text_of: expected a weight in [0, 1], got {blend.weight}")
        if len(self.anchor_embeds) not in (0, len(self.anchors)):
            raise InputError(
                f"SectionControl.anchor_embeds: expected one entry per anchor ({len(self.anchors)}), "
                f"got {len(self.anchor_embeds)}"
            )
        for anchor in self.anchor_of:
            if anchor is not None and not 0 <= anchor < len(self.anchors):
                raise InputError(f"SectionControl.anchor_of: anchor {anchor} named, but {len(self.anchors)} given")

    def to(self, device: torch.device) -> SectionControl:
        """The features on ``device`` (keyframe latents in float32, as the loop's latents); masks
        stay host tensors, as ``Conditioning.to`` keeps them."""

        def text(t: SectionText) -> SectionText:
            return SectionText(t.text_embeds.to(device), t.text_mask.cpu(), t.pooled.to(device))

        return replace(
            self,
            texts=tuple(text(t) for t in self.texts),
            anchors=tuple(a.to(device, torch.float32) for a in self.anchors),
            anchor_embeds=tuple(None if e is None else e.to(device) for e in self.anchor_embeds),
        )

    def conditioning(self, video_index: int, base: Conditioning) -> Conditioning:
        """``base`` with this section's prompt and keyframe image embeddings."""
        if self.text_of:
            text = self._text(self.text_of[video_index])
            base = replace(base, text_embeds=text.text_embeds, text_mask=text.text_mask, pooled=text.pooled)
        anchor = self.anchor_of[video_index] if self.anchor_of else None
        if anchor is not None and self.anchor_embeds and self.anchor_embeds[anchor] is not None:
            base = replace(base, image_embeds=self.anchor_embeds[anchor])
        return base

    def start_slot(self, video_index: int) -> torch.Tensor | None:
        """The latent standing in this section's start-frame slot, or None for the start latent."""
        anchor = self.anchor_of[video_index] if self.anchor_of else None
        return None if anchor is None else self.anchors[anchor]

    def _text(self, blend: TextBlend) -> SectionText:
        first = self.texts[blend.first]
        if blend.weight == 0.0:
            return first
        second = self.texts[blend.second]
        w = blend.weight
        return SectionText(
            text_embeds=first.text_embeds * (1.0 - w) + second.text_embeds.to(first.text_embeds) * w,
            text_mask=first.text_mask | second.text_mask.to(first.text_mask.device),
            pooled=first.pooled * (1.0 - w) + second.pooled.to(first.pooled) * w,
        )
