"""encode_prompt end to end on tiny encoders, against FramePack's procedure run with transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framepack.conditioning import Conditioning
from framepack.errors import InputError
from framepack.models.clip import CLIPTextEncoder
from framepack.models.llama import LlamaTextEncoder
from framepack.models.tokenizers import CLIPTokenizer, LlamaTokenizer
from framepack.prompt import (
    HUNYUAN_VIDEO_TEMPLATE,
    build_conditioning,
    encode_prompt,
)
from tests.encoder_fixtures import max_error_ok, save_clip, save_llama, save_llama_tokenizer

# The real CLIP vocabulary, shipped with the tests (tests/data/clip-tokenizer/README.md says where it comes from).
CLIP_FILES = Path(__file__).resolve().parent / "data" / "clip-tokenizer"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """A HunyuanVideo-like folder with tiny encoders, loaded both ways."""
    from transformers import CLIPTokenizer as RefCLIPTokenizer
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("HunyuanVideo")
    ref_llama = save_llama(root / "text_encoder")
    ref_clip = save_clip(root / "text_encoder_2")
    save_llama_tokenizer(root / "tokenizer")
    (root / "tokenizer_2").mkdir()
    for name in ("vocab.json", "merges.txt"):
        (root / "tokenizer_2" / name).write_bytes((CLIP_FILES / name).read_bytes())
    ours = dict(
        llama=LlamaTextEncoder.from_pretrained(root, subfolder="text_encoder"),
        clip=CLIPTextEncoder.from_pretrained(root, subfolder="text_encoder_2"),
        llama_tokenizer=LlamaTokenizer.from_pretrained(root),
        clip_tokenizer=CLIPTokenizer.from_pretrained(root),
    )
    ref = dict(
        llama=ref_llama,
        clip=ref_clip,
        llama_tokenizer=PreTrainedTokenizerFast.from_pretrained(root / "tokenizer"),
        clip_tokenizer=RefCLIPTokenizer(vocab=str(CLIP_FILES / "vocab.json"), merges=str(CLIP_FILES / "merges.txt")),
    )
    return ours, ref


def reference_encode(prompt: str, llama, clip, llama_tokenizer, clip_tokenizer):
    """FramePack's encode_prompt_conds + crop_or_pad_yield_mask(…, 512), written from FramePack's hunyuan.py."""
    crop_start, max_length = 95, 256
    inputs = llama_tokenizer(
        HUNYUAN_VIDEO_TEMPLATE.format(prompt), padding="max_length", max_length=max_length + crop_start,
        truncation=True, return_tensors="pt", return_attention_mask=True,
    )  # fmt: skip
    n = int(inputs.attention_mask.sum())
    with torch.no_grad():
        hidden = llama(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, output_hidden_states=True)
        vec = hidden.hidden_states[-3][:, crop_start:n]
        assert inputs.attention_mask[:, crop_start:n].bool().all()
        clip_ids = clip_tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        pooled = clip(input_ids=clip_ids.input_ids).pooler_output
    padded = torch.zeros(1, 512, vec.shape[2])
    padded[:, : vec.shape[1]] = vec
    mask = torch.zeros(1, 512, dtype=torch.bool)
    mask[:, : vec.shape[1]] = True
    untruncated = len(llama_tokenizer(HUNYUAN_VIDEO_TEMPLATE.format(prompt)).input_ids)
    return padded, mask, pooled, max(0, untruncated - (max_length + crop_start))


@pytest.mark.parametrize(
    "prompt",
    [
        "The man dances energetically, leaping mid-air with fluid arm swings and quick footwork.",
        "",
        "\nstarts with a newline",
        "an over-long prompt, " * 70,
    ],
    ids=["dancer", "empty", "newline", "over-long"],
)
def test_encode_prompt_matches_reference(stack, prompt: str) -> None:
    ours, ref = stack
    got = encode_prompt(prompt, **ours)
    text_embeds, text_mask, pooled, dropped = reference_encode(prompt, **ref)
    assert got.text_embeds.shape == (1, 512, 32) and got.text_mask.dtype == torch.bool
    assert torch.equal(got.text_mask, text_mask)
    assert got.dropped_tokens == dropped
    for name, a, b in (("text_embeds", got.text_embeds, text_embeds), ("pooled", got.pooled, pooled)):
        ok, err, bound = max_error_ok(a, b)
        assert ok, f"{name}: max error {err} > {bound}"


def test_encode_prompt_crop_and_truncation(stack) -> None:
    ours, _ = stack
    short = encode_prompt("a cat", **ours)
    # "a cat" -> "a", " cat" + the closing <|eot_id|>: 3 valid rows after the 95-token crop.
    assert short.n_tokens == 3 and short.dropped_tokens == 0
    assert short.text_embeds[0, 3:].abs().max() == 0 and short.text_embeds[0, :3].abs().min() > 0
    long = encode_prompt("Describe" + " video" * 299, **ours)
    # Both words are single tokens of the vocabulary (as after "\n\n" in the template):
    # 300 tokens + <|eot_id|> after the prefix, 256 kept, 45 dropped; CLIP keeps 75 of 300.
    assert long.n_tokens == 256 and long.dropped_tokens == 45 and long.clip_dropped_tokens == 225


def test_build_conditioning(stack) -> None:
    ours, _ = stack
    positive = encode_prompt("a cat", **ours)
    image = torch.randn(1, 729, 16)
    conditioning = build_conditioning(positive, image, guidance=10.0)
    assert isinstance(conditioning, Conditioning)
    assert conditioning.guidance.tolist() == [10.0] and conditioning.image_embeds is image


def test_encode_prompt_rejects_non_string(stack) -> None:
    ours, _ = stack
    with pytest.raises(InputError, match="str"):
        encode_prompt(["a", "b"], **ours)  # type: ignore[arg-type]
