"""Tiny stand-ins for the real tokenizers, so the random ``tiny`` pipeline runs offline.

The tiny Llama tokenizer is a byte-level BPE trained on the HunyuanVideo template (so the
template's prefix is the real 95 tokens and ``crop_start`` stays right) with Llama-3's split
regex and special-token ids. The tiny CLIP tokenizer knows single bytes only. Neither is
meant to produce meaningful text features: the tiny models are random.
"""

from __future__ import annotations

import json

import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

from .models.tokenizers import CLIPTokenizer, LlamaTokenizer
from .prompt import HUNYUAN_VIDEO_TEMPLATE

LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_SPECIAL_IDS = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eot_id|>": 128009,
    "<pad>": 128258,
}
CLIP_BOS_ID, CLIP_EOS_ID = 49406, 49407


def tiny_llama_tokenizer() -> LlamaTokenizer:
    """A byte-level BPE in Llama-3's form, trained until every template word is one token."""
    tokenizer = tokenizers.Tokenizer(models.BPE(ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([HUNYUAN_VIDEO_TEMPLATE] * 4, trainer)
    vocab = tokenizer.get_vocab()
    for token, token_id in LLAMA3_SPECIAL_IDS.items():
        vocab[token] = token_id
    merges = [tuple(m) for m in _trained_merges(tokenizer)]
    final = tokenizers.Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    final.pre_tokenizer = tokenizer.pre_tokenizer
    final.decoder = tokenizer.decoder
    final.add_special_tokens(list(LLAMA3_SPECIAL_IDS))
    return LlamaTokenizer(final, bos_id=LLAMA3_SPECIAL_IDS["<|begin_of_text|>"], pad_id=LLAMA3_SPECIAL_IDS["<pad>"])


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """CLIP's byte alphabet (with and without the ``</w>`` word end) and no merges."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {char: i for i, char in enumerate(sorted(alphabet))}
    vocab.update({f"{char}</w>": len(alphabet) + i for i, char in enumerate(sorted(alphabet))})
    vocab.update({"<|startoftext|>": CLIP_BOS_ID, "<|endoftext|>": CLIP_EOS_ID})
    return CLIPTokenizer(vocab, [])


def _trained_merges(tokenizer: tokenizers.Tokenizer) -> list[list[str]]:
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [m.split(" ") if isinstance(m, str) else m for m in merges]
