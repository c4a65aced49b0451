"""Tiny random encoders saved in the real checkpoint layouts by transformers (test-only reference)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

LLAMA_TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=8, vocab_size=128320, rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001,
)  # fmt: skip
CLIP_TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=49408,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2,
    pad_token_id=1, projection_dim=32,
)  # fmt: skip
SIGLIP_TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=14, image_size=384,
    num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
)  # fmt: skip


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Every weight random (norm weights near 1 so activations stay sane), nothing left at init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.3 * noise / max(1, p.shape[-1]) ** 0.5 if p.ndim > 1 else 0.2 * noise)
    return model.eval()


def save_llama(folder: Path, seed: int = 0):
    from transformers import LlamaConfig, LlamaModel

    model = randomize(LlamaModel(LlamaConfig(**LLAMA_TINY)), seed)
    model.save_pretrained(folder, max_shard_size="5MB")  # sharded with an index, like the real one
    assert (folder / "model.safetensors.index.json").exists()
    return model


def save_clip(folder: Path, seed: int = 1):
    from transformers import CLIPTextConfig, CLIPTextModel

    model = randomize(CLIPTextModel(CLIPTextConfig(**CLIP_TINY)), seed)
    model.save_pretrained(folder)
    return model


def save_siglip(folder: Path, seed: int = 2):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    model = randomize(SiglipVisionModel(SiglipVisionConfig(**SIGLIP_TINY)), seed)
    model.save_pretrained(folder)
    return model


def add_prefix(folder: Path, prefix: str) -> None:
    """Rewrite model.safetensors with ``prefix`` on every key, as transformers 4.x saved them."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    assert not any(k.startswith(prefix) for k in tensors)
    save_file({prefix + k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def max_error_ok(ours: torch.Tensor, ref: torch.Tensor) -> tuple[bool, float, float]:
    err = (ours - ref).abs().max().item()
    bound = 1e-5 * max(1.0, ref.abs().max().item())
    return err <= bound, err, bound


# Llama-3's pre-tokenizer split (tokenizer.json of Meta-Llama-3 / llava-llama-3).
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_SPECIAL_IDS = {
    "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007, "<|eot_id|>": 128009, "<pad>": 128258,
}  # fmt: skip


def save_llama_tokenizer(folder: Path) -> Path:
    """A small byte-level BPE tokenizer.json in Llama-3's form: its split regex, ignore_merges,
    the real special-token ids, a BOS template post-processor; plus the side files.

    Trained until every word of the template is one token, as in the real vocabulary, so
    the template's prefix is the real 95 tokens."""
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from framepack.prompt import HUNYUAN_VIDEO_TEMPLATE

    tokenizer = Tokenizer(models.BPE(ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [HUNYUAN_VIDEO_TEMPLATE] * 4 + [
        "The man dances energetically, leaping mid-air with fluid arm swings and quick footwork.",
        "A cat walks on the grass, realistic style. The girl smiles; it's a sunny day!",
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=3000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer)
    data = json.loads(tokenizer.to_str())
    data["model"]["vocab"].update(LLAMA3_SPECIAL_IDS)  # ids as in the real file, far beyond the trained ones
    data["added_tokens"] = [
        dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
        for t, i in LLAMA3_SPECIAL_IDS.items()
    ]
    tokenizer = Tokenizer.from_str(json.dumps(data))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", 128000)],
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    specials = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<pad>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**specials, "tokenizer_class": "PreTrainedTokenizerFast", "padding_side": "right",
                    "model_max_length": 1000000, "clean_up_tokenization_spaces": False})
    )  # fmt: skip
    return folder
