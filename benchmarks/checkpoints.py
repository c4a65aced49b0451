"""A whole FramePack checkpoint tree with random weights, in the real layout, for benchmarks.

    transformer/              diffusers HunyuanVideoFramepackTransformer3DModel (sharded)
    hunyuan/vae               diffusers AutoencoderKLHunyuanVideo
    hunyuan/text_encoder      transformers LlamaModel (sharded)
    hunyuan/text_encoder_2    transformers CLIPTextModel
    hunyuan/tokenizer         a small Llama-3-style tokenizer.json
    hunyuan/tokenizer_2       CLIP's real vocab.json + merges.txt (tests/data/clip-tokenizer)
    redux/image_encoder       transformers SiglipVisionModel

Each part is written by its reference library's ``save_pretrained`` and loads through
``FramePackPipeline.from_pretrained(tree / "transformer", hunyuan=tree / "hunyuan",
redux=tree / "redux")``. The encoder widths follow the transformer config (its text,
pooled and image projection widths). Run from the repository root: ``tests`` helpers are
imported for the tiny configs and the randomisation.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from framepack.models.transformer import TransformerConfig
from framepack.models.vae import VAEConfig
from tests.encoder_fixtures import CLIP_TINY, LLAMA_TINY, SIGLIP_TINY, randomize, save_llama_tokenizer
from tests.transformer_support import TINY as TRANSFORMER_TINY
from tests.transformer_support import build_diffusers_model, randomise_

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIP_TOKENIZER_FILES = REPO_ROOT / "tests" / "data" / "clip-tokenizer"
SHARD_SIZE = "100MB"  # several shards with an index json, like the real repos


@dataclasses.dataclass(frozen=True)
class TreeSizes:
    """How big the random tree is. Llama's full 128320-token embedding dominates (4 bytes x
    vocab x hidden), and a generation reads only the prompt's rows of it."""

    transformer_preset: str = "medium"
    llama_layers: int = 4
    llama_intermediate: int = 2816
    llama_heads: int = 8
    clip_layers: int = 2
    siglip_layers: int = 2
    vae_channels: tuple[int, ...] = (8, 8, 16, 16)  # narrower than the tiny preset: decoding dominates CPU time

    def transformer(self) -> TransformerConfig:
        return TransformerConfig.preset(self.transformer_preset)

    def describe(self) -> str:
        t = self.transformer()
        return (f"transformer '{self.transformer_preset}' (inner dim {t.inner_dim}, "
                f"{t.num_layers}+{t.num_single_layers} blocks), Llama {t.text_embed_dim}x{self.llama_layers} layers with vocab {LLAMA_TINY['vocab_size']}, "
                f"CLIP {t.pooled_projection_dim}x{self.clip_layers}, SigLIP {t.image_proj_dim}x{self.siglip_layers}, "
                f"VAE channels {list(self.vae_channels)}")  # fmt: skip


def write_checkpoint_tree(folder: Path, sizes: TreeSizes = TreeSizes()) -> Path:
    """Write every component under ``folder``; returns ``folder``."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its shard-writing bars would cut into the printed table
    config = sizes.transformer()
    hunyuan, redux = folder / "hunyuan", folder / "redux"
    _save_transformer(folder / "transformer", config)
    _save_vae(hunyuan / "vae", sizes.vae_channels)
    _save_llama(hunyuan / "text_encoder", config.text_embed_dim, sizes)
    _save_clip(hunyuan / "text_encoder_2", config.pooled_projection_dim, sizes.clip_layers)
    save_llama_tokenizer(hunyuan / "tokenizer")
    (hunyuan / "tokenizer_2").mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(CLIP_TOKENIZER_FILES / name, hunyuan / "tokenizer_2" / name)
    _save_siglip(redux / "image_encoder", config.image_proj_dim, sizes.siglip_layers)
    return folder


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def _save_transformer(folder: Path, config: TransformerConfig) -> None:
    model = build_diffusers_model(None, seed=0, **{key: getattr(config, key) for key in TRANSFORMER_TINY})
    model.save_pretrained(folder, max_shard_size=SHARD_SIZE, safe_serialization=True)


def _save_vae(folder: Path, channels: tuple[int, ...]) -> None:
    from diffusers import AutoencoderKLHunyuanVideo

    tiny = VAEConfig.preset("tiny")
    torch.manual_seed(0)
    model = AutoencoderKLHunyuanVideo(
        block_out_channels=list(channels), layers_per_block=tiny.layers_per_block,
        norm_num_groups=tiny.norm_num_groups, latent_channels=tiny.latent_channels,
    )  # fmt: skip
    randomise_(model, seed=3)  # weights ~ 1/sqrt(fan_in): activations stay in range through the convs
    model.save_pretrained(folder)


def _save_llama(folder: Path, hidden: int, sizes: TreeSizes) -> None:
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(**{
        **LLAMA_TINY, "hidden_size": hidden, "intermediate_size": sizes.llama_intermediate,
        "num_hidden_layers": sizes.llama_layers, "num_attention_heads": sizes.llama_heads,
        "num_key_value_heads": sizes.llama_heads // 4, "head_dim": hidden // sizes.llama_heads,
    })  # fmt: skip
    randomize(LlamaModel(config), seed=0).save_pretrained(folder, max_shard_size=SHARD_SIZE)


def _save_clip(folder: Path, hidden: int, layers: int) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(**{**CLIP_TINY, "hidden_size": hidden, "intermediate_size": 4 * hidden,
                               "num_hidden_layers": layers, "projection_dim": hidden})  # fmt: skip
    randomize(CLIPTextModel(config), seed=1).save_pretrained(folder)


def _save_siglip(folder: Path, hidden: int, layers: int) -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    heads = max(1, hidden // 64)
    config = SiglipVisionConfig(**{**SIGLIP_TINY, "hidden_size": hidden, "intermediate_size": 4 * hidden,
                                   "num_hidden_layers": layers, "num_attention_heads": heads})  # fmt: skip
    randomize(SiglipVisionModel(config), seed=2).save_pretrained(folder)
