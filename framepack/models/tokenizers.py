"""Prompt tokenizers for the two text encoders, on the ``tokenizers`` library.

``LlamaTokenizer`` reads HunyuanVideo's ``tokenizer/tokenizer.json``; ``CLIPTokenizer`` reads
``tokenizer_2/vocab.json`` + ``merges.txt`` and reproduces the slow ``CLIPTokenizer`` of
transformers 4.46 without ftfy (what FramePack runs): its text cleaning is done here in
Python, the regex split and byte-level BPE by ``tokenizers``. Both pad on the right to a
fixed length, truncate from the end, and report how many tokens truncation dropped.
"""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from pathlib import Path

import tokenizers
import torch

from ..errors import CheckpointError, InputError
from .loading import read_json, resolve_folder


@dataclasses.dataclass(frozen=True)
class TokenizedText:
    """One prompt: ids and mask [1, max_length] int64 (right padded), and what truncation cut."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    dropped_tokens: int

    @property
    def length(self) -> int:
        """Number of real (unpadded) tokens."""
        return int(self.attention_mask.sum())


def _fit(prefix: list[int], content: list[int], suffix: list[int], max_length: int, pad_id: int) -> TokenizedText:
    """prefix + content + suffix, content cut from its end to fit, then right padding."""
    room = max_length - len(prefix) - len(suffix)
    if room < 0:
        raise InputError(f"max_length {max_length} leaves no room for the {len(prefix) + len(suffix)} special tokens")
    ids = prefix + content[:room] + suffix
    valid = len(ids)
    ids += [pad_id] * (max_length - valid)
    mask = [1] * valid + [0] * (max_length - valid)
    return TokenizedText(
        input_ids=torch.tensor([ids], dtype=torch.long),
        attention_mask=torch.tensor([mask], dtype=torch.long),
        dropped_tokens=max(0, len(content) - room),
    )


def _optional_json(path: Path) -> dict:
    return read_json(path) if path.exists() else {}


def _special_token(settings: dict, name: str, default: str) -> str:
    """A token of special_tokens_map.json: a plain string or an AddedToken dict."""
    value = settings.get(name, default)
    return value["content"] if isinstance(value, dict) else str(value)


def _token_id(tokenizer: tokenizers.Tokenizer, token: str, where: Path) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise CheckpointError(f"tokenizer in {where} has no token {token!r}")
    return token_id


class LlamaTokenizer:
    """HunyuanVideo's Llama-3 tokenizer: BOS prepended once, no EOS, right padding."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, bos_id: int, pad_id: int) -> None:
        self.tokenizer = tokenizer
        self.bos_id = bos_id
        self.pad_id = pad_id

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike[str], *, subfolder: str | None = "tokenizer", revision: str | None = None
    ) -> LlamaTokenizer:
        folder = resolve_folder(
            source, subfolder=subfolder, revision=revision, patterns=("tokenizer.json", "special_tokens_map.json")
        )
        path = folder / "tokenizer.json"
        if not path.exists():
            raise CheckpointError(f"no tokenizer.json in {folder}")
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception subclasses for bad files
            raise CheckpointError(f"cannot read {path}: {e}") from e
        settings = _optional_json(folder / "special_tokens_map.json")
        bos = _special_token(settings, "bos_token", "<|begin_of_text|>")
        pad = _special_token(settings, "pad_token", "<pad>")
        return cls(tokenizer, bos_id=_token_id(tokenizer, bos, folder), pad_id=_token_id(tokenizer, pad, folder))

    def content_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS, padding or truncation."""
        # The file's own post-processor is bypassed so BOS is added exactly once, here.
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def __call__(self, text: str, *, max_length: int) -> TokenizedText:
        if not isinstance(text, str):
            raise InputError(f"prompt: expected a str, got {type(text).__name__}")
        return _fit([self.bos_id], self.content_ids(text), [], max_length, self.pad_id)


_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # fmt: skip
_CLIP_SPLIT = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
# The slow tokenizer reads at most this many merges (49152 - 256 - 2 of them).
_CLIP_MAX_MERGES = 49152 - 256 - 2


def clean_clip_text(text: str) -> str:
    """transformers' BasicTokenizer as the slow CLIPTokenizer uses it without ftfy."""
    chars = []
    for char in text:
        code = ord(char)
        category = unicodedata.category(char)
        if char in "\t\n\r" or category == "Zs":
            chars.append(" ")
        elif code in (0, 0xFFFD) or category.startswith("C"):
            continue
        elif any(low <= code <= high for low, high in _CJK_RANGES):
            chars.append(f" {char} ")
        else:
            chars.append(char)
    words = unicodedata.normalize("NFC", "".join(chars)).split()
    return " ".join(word.lower() for word in words)


class CLIPTokenizer:
    """CLIP's BPE tokenizer: ``<|startoftext|>`` content ``<|endoftext|>``, padded with ``<|endoftext|>``."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        *,
        bos_token: str = "<|startoftext|>",
        eos_token: str = "<|endoftext|>",
        pad_token: str = "<|endoftext|>",
        max_length: int = 77,
    ) -> None:
        model = tokenizers.models.BPE(
            vocab, merges, unk_token=eos_token, end_of_word_suffix="</w>", continuing_subword_prefix="", fuse_unk=False
        )
        self.tokenizer = tokenizers.Tokenizer(model)
        self.tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
            [
                tokenizers.pre_tokenizers.Split(tokenizers.Regex(_CLIP_SPLIT), behavior="removed", invert=True),
                tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        self.tokenizer.add_special_tokens([bos_token, eos_token])
        missing = [t for t in (bos_token, eos_token, pad_token) if t not in vocab]
        if missing:
            raise CheckpointError(f"CLIP vocabulary lacks the special token(s) {missing}")
        self.bos_id, self.eos_id, self.pad_id = vocab[bos_token], vocab[eos_token], vocab[pad_token]
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike[str], *, subfolder: str | None = "tokenizer_2", revision: str | None = None
    ) -> CLIPTokenizer:
        folder = resolve_folder(
            source,
            subfolder=subfolder,
            revision=revision,
            patterns=("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"),
        )
        vocab = read_json(folder / "vocab.json")
        try:
            lines = (folder / "merges.txt").read_text(encoding="utf-8").strip().split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"cannot read {folder / 'merges.txt'}: {e}") from e
        merges = [tuple(line.split()) for line in lines[1 : _CLIP_MAX_MERGES + 1]]  # line 0 is "#version"
        bad = [m for m in merges if len(m) != 2]
        if bad:
            raise CheckpointError(f"{folder / 'merges.txt'}: expected 'left right' on every line, got {bad[:3]}")
        settings = _optional_json(folder / "special_tokens_map.json")
        config = _optional_json(folder / "tokenizer_config.json")
        return cls(
            vocab,
            merges,  # type: ignore[arg-type]
            bos_token=_special_token(settings, "bos_token", "<|startoftext|>"),
            eos_token=_special_token(settings, "eos_token", "<|endoftext|>"),
            pad_token=_special_token(settings, "pad_token", "<|endoftext|>"),
            max_length=int(config.get("model_max_length", 77)),
        )

    def content_ids(self, text: str) -> list[int]:
        """BPE ids of ``text`` without BOS/EOS, padding or truncation."""
        return self.tokenizer.encode(clean_clip_text(text), add_special_tokens=False).ids

    def __call__(self, text: str) -> TokenizedText:
        if not isinstance(text, str):
            raise InputError(f"prompt: expected a str, got {type(text).__name__}")
        return _fit([self.bos_id], self.content_ids(text), [self.eos_id], self.max_length, self.pad_id)
