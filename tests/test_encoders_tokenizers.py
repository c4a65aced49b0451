"""Tokenizer parity: Llama-3 against transformers' fast tokenizer on the same tokenizer.json;
CLIP against transformers 4.46's slow CLIPTokenizer without ftfy (recorded) and 5.x's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from framepack.errors import CheckpointError, InputError
from framepack.models.tokenizers import CLIPTokenizer, LlamaTokenizer, clean_clip_text
from framepack.prompt import HUNYUAN_VIDEO_TEMPLATE
from tests.encoder_fixtures import save_llama_tokenizer

# The real CLIP vocabulary, shipped with the tests (tests/data/clip-tokenizer/README.md says where it comes from).
CLIP_FILES = Path(__file__).resolve().parent / "data" / "clip-tokenizer"
CLIP_REFERENCE = json.loads((Path(__file__).parent / "data" / "clip_tokenizer_reference.json").read_text())["cases"]

PROMPTS = [
    "The man dances energetically, leaping mid-air with fluid arm swings and quick footwork.",
    "",
    "   leading and trailing   spaces\t\ttabs\nnew\r\n\n\nlines   ",
    "Unicode: café naïve Ünïcödé ÆØÅ straße İstanbul ΣΊΣΥΦΟΣ 中文字符 日本語 한국어",
    "Emoji 😀🎉👩‍👩‍👧‍👦 🇫🇷 and ❤️ hearts!!!",
    "Punctuation... !?!? (parens) [brackets] {braces} \"quotes\" it's we're I'll they've 12345 3.14",
    "\nstarts with a newline",
    "literal <|eot_id|> inside",
    "an over-long prompt, " * 80,
]


@pytest.fixture(scope="module")
def llama_tokenizers(tmp_path_factory: pytest.TempPathFactory):
    from transformers import PreTrainedTokenizerFast

    folder = save_llama_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return LlamaTokenizer.from_pretrained(folder, subfolder=None), PreTrainedTokenizerFast.from_pretrained(folder)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_llama_tokenizer_matches_transformers(llama_tokenizers, prompt: str) -> None:
    ours, ref = llama_tokenizers
    text = HUNYUAN_VIDEO_TEMPLATE.format(prompt)
    expected = ref(text, padding="max_length", max_length=351, truncation=True, return_tensors="pt")
    got = ours(text, max_length=351)
    assert torch.equal(got.input_ids, expected.input_ids)
    assert torch.equal(got.attention_mask, expected.attention_mask)
    assert got.dropped_tokens == max(0, len(ref(text).input_ids) - 351)


def test_llama_tokenizer_template_prefix_is_95_tokens(llama_tokenizers) -> None:
    ours, ref = llama_tokenizers
    got = ours(HUNYUAN_VIDEO_TEMPLATE.format("a cat"), max_length=351)
    ids = got.input_ids[0].tolist()
    assert ids[0] == 128000 and ids.count(128000) == 1
    # The prefix ends with "<|start_header_id|>user<|end_header_id|>\n\n".
    assert ids[91] == 128006 and ids[93] == 128007 and ids[94] == ref.convert_tokens_to_ids("ĊĊ")
    assert ref.decode(ids[95 : got.length - 1]) == "a cat"
    assert ids[got.length - 1] == 128009 and ids[got.length :] == [128258] * (351 - got.length)


def test_llama_tokenizer_over_long_prompt_is_cut(llama_tokenizers) -> None:
    ours, _ = llama_tokenizers
    got = ours(HUNYUAN_VIDEO_TEMPLATE.format("word " * 400), max_length=351)
    assert got.length == 351 and got.dropped_tokens > 0
    assert got.input_ids[0, -1] != 128009  # the closing <|eot_id|> is lost


def test_llama_tokenizer_rejects_bad_inputs(llama_tokenizers, tmp_path: Path) -> None:
    ours, _ = llama_tokenizers
    with pytest.raises(InputError, match="str"):
        ours(None, max_length=10)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        LlamaTokenizer.from_pretrained(tmp_path, subfolder=None)


@pytest.fixture(scope="module")
def clip_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(CLIP_FILES, subfolder=None)


def test_clip_tokenizer_hand_worked_example(clip_tokenizer: CLIPTokenizer) -> None:
    # The example of the data folder's README.
    got = clip_tokenizer("The man dances energetically, leaping mid-air with fluid arm swings and quick footwork.")
    head = [49406, 518, 786, 24083, 2244, 619, 13375, 267, 534, 18456, 4734, 268, 1922, 593, 16717, 4793, 29141,
            537, 3712, 6702, 951, 269, 49407]  # fmt: skip
    assert got.input_ids[0].tolist() == head + [49407] * (77 - len(head))
    assert got.dropped_tokens == 0


@pytest.mark.parametrize("case", CLIP_REFERENCE, ids=range(len(CLIP_REFERENCE)))
def test_clip_tokenizer_matches_slow_reference(clip_tokenizer: CLIPTokenizer, case: dict) -> None:
    got = clip_tokenizer(case["prompt"])
    assert got.input_ids[0].tolist() == case["input_ids"]
    assert got.dropped_tokens == max(0, case["untruncated_length"] - 77)


@pytest.mark.parametrize("prompt", [p for p in PROMPTS if p.isascii()])
def test_clip_tokenizer_matches_transformers_5_on_ascii(clip_tokenizer: CLIPTokenizer, prompt: str) -> None:
    # 5.x's tokenizers-based CLIPTokenizer agrees with the slow one wherever no cleaning step differs.
    from transformers import CLIPTokenizer as ReferenceCLIPTokenizer

    ref = ReferenceCLIPTokenizer(vocab=str(CLIP_FILES / "vocab.json"), merges=str(CLIP_FILES / "merges.txt"))
    expected = ref(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    assert clip_tokenizer(prompt).input_ids[0].tolist() == expected


def test_clip_text_cleaning_hand_worked() -> None:
    assert clean_clip_text("  A\tB\u3000C\u200bD ") == "a b cd"
    assert clean_clip_text("中文x") == "中 文 x"
    assert clean_clip_text("ΟΔΟΣ") == "οδος"  # str.lower turns the final sigma into ς
    assert clean_clip_text("e\u0301") == "\u00e9"  # NFC
