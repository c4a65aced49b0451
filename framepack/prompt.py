"""Prompt -> text conditioning, as FramePack's ``encode_prompt_conds`` computes it.

The prompt is wrapped in HunyuanVideo's video template, tokenized whole (a prompt that
starts with a newline merges with the template's ``\\n\\n``), run through Llama up to
``hidden_states[-3]``; the 95 template tokens in front are cropped off, leaving at most 256
prompt tokens (plus the closing ``<|eot_id|>`` when it fits), zero-padded to 512 with a
mask. CLIP-L's pooled vector of the bare prompt completes it.
"""

from __future__ import annotations

import dataclasses

import torch

from .conditioning import Conditioning
from .errors import InputError
from .models.clip import CLIPTextEncoder
from .models.llama import HIDDEN_STATE_INDEX, LlamaTextEncoder
from .models.tokenizers import CLIPTokenizer, LlamaTokenizer

HUNYUAN_VIDEO_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
# BOS + the system part + "<|start_header_id|>user<|end_header_id|>\n\n" under the Llama-3 tokenizer.
TEMPLATE_CROP_START = 95
MAX_PROMPT_TOKENS = 256  # Llama prompt tokens kept after the template
TEXT_EMBED_LENGTH = 512  # rows of text_embeds: the prompt tokens zero-padded to this


@dataclasses.dataclass(frozen=True)
class PromptEmbeddings:
    """One encoded prompt.

    text_embeds [1, 512, D]  Llama features of the prompt tokens, zero after the mask
    text_mask   [1, 512] bool  True for the first n_tokens positions
    pooled      [1, 768]     CLIP-L pooled output
    dropped_tokens           templated Llama tokens cut by truncation (the closing
                             <|eot_id|> counts among them); 0 when the prompt fits
    clip_dropped_tokens      prompt tokens CLIP's 77-token limit cut
    """

    text_embeds: torch.Tensor
    text_mask: torch.Tensor
    pooled: torch.Tensor
    dropped_tokens: int = 0
    clip_dropped_tokens: int = 0

    @property
    def n_tokens(self) -> int:
        return int(self.text_mask.sum())


@torch.no_grad()
def encode_prompt(
    prompt: str,
    llama: LlamaTextEncoder,
    clip: CLIPTextEncoder,
    llama_tokenizer: LlamaTokenizer,
    clip_tokenizer: CLIPTokenizer,
    *,
    template: str = HUNYUAN_VIDEO_TEMPLATE,
    crop_start: int = TEMPLATE_CROP_START,
    max_length: int = MAX_PROMPT_TOKENS,
    length: int = TEXT_EMBED_LENGTH,
    hidden_state_index: int = HIDDEN_STATE_INDEX,
) -> PromptEmbeddings:
    """Encode one prompt; outputs are in the encoders' dtype on their devices."""
    if not isinstance(prompt, str):
        raise InputError(f"prompt: expected a str, got {type(prompt).__name__}")
    tokens = llama_tokenizer(template.format(prompt), max_length=max_length + crop_start)
    valid = tokens.length
    if valid <= crop_start:
        raise InputError(f"templated prompt has {valid} tokens, not more than crop_start={crop_start}")
    device = llama.embed_tokens.weight.device  # the host while the encoder streams
    # Right padding and causal attention: pad tokens never reach valid ones, so they are not run.
    ids = tokens.input_ids[:, :valid].to(device)
    hidden = llama(ids, tokens.attention_mask[:, :valid].to(device), hidden_state_index=hidden_state_index)
    text_embeds, text_mask = crop_or_pad_with_mask(hidden[:, crop_start:], length)

    clip_tokens = clip_tokenizer(prompt)
    pooled = clip(clip_tokens.input_ids.to(clip.device))
    return PromptEmbeddings(
        text_embeds=text_embeds,
        text_mask=text_mask,
        pooled=pooled,
        dropped_tokens=tokens.dropped_tokens,
        clip_dropped_tokens=clip_tokens.dropped_tokens,
    )


def crop_or_pad_with_mask(features: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, n, D] -> ([B, length, D] zero-padded or cropped, [B, length] bool mask of real rows).

    The mask is a host tensor wherever the features are: it is read on the host.
    """
    batch, n, dim = features.shape
    mask = torch.arange(length)[None].expand(batch, length) < n
    if n >= length:
        return features[:, :length], mask
    return torch.cat([features, features.new_zeros(batch, length - n, dim)], dim=1), mask


def build_conditioning(
    prompt: PromptEmbeddings, image_embeds: torch.Tensor | None, guidance: float = 10.0
) -> Conditioning:
    """A batch-of-one Conditioning from an encoded prompt, SigLIP features and the distilled guidance scale."""
    return Conditioning(
        text_embeds=prompt.text_embeds,
        text_mask=prompt.text_mask,
        pooled=prompt.pooled,
        guidance=torch.full((prompt.text_embeds.shape[0],), float(guidance)),  # a host float32 setting
        image_embeds=image_embeds,
    )
