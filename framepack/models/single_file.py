"""Load a component from the one safetensors file users have (a ComfyUI models folder).

Such a file has no config.json: a model is built with its official config (the real
checkpoint's, ``OFFICIAL_CONFIGS``) unless ``config`` names another. The file's keys are
renamed onto the native checkpoint keys in its parsed header (``rekey``: no tensor is read
or copied for it), then the usual strict ``load_checkpoint`` fills the model, so a missing
or extra tensor is still named and the weights may stay memory-mapped.

| file                                       | names                                                       |
|--------------------------------------------|-------------------------------------------------------------|
| ``FramePackI2V_HY_*``, ``FramePack_F1_*``  | the transformer's diffusers names (bf16 or fp8 weights)     |
| ``llava_llama3_*``                         | LlamaForCausalLM: ``model.`` stripped, ``lm_head`` dropped  |
| ``clip_l*``                                | CLIPTextModel (``text_model.`` optional)                    |
| ``sigclip_vision_patch14_384*``            | SiglipVisionModel (``vision_model.``; the head is unused)   |
| ``hunyuan_video_vae_*``                    | diffusers names, or ComfyUI's LDM names (``vae_ldm``)       |
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from ..errors import CheckpointError, ConfigError
from ..precision import default_dtype
from .clip import CLIPTextConfig, CLIPTextEncoder
from .configuration import ModelConfig
from .llama import LlamaConfig, LlamaTextEncoder
from .loading import PretrainedModel, SafetensorsFile, Storage, load_checkpoint
from .siglip import SiglipImageEncoder, SiglipVisionConfig
from .transformer import FramePackTransformer, TransformerConfig
from .vae import HunyuanVideoVAE, VAEConfig
from .vae_ldm import ldm_to_diffusers, vae_layout

logger = logging.getLogger("framepack")

ModelT = TypeVar("ModelT", bound=PretrainedModel)
# (file key, shape) -> (native checkpoint key, shape), or None to leave the tensor out.
Rename = Callable[[str, tuple[int, ...]], tuple[str, tuple[int, ...]] | None]

# The configs of the real checkpoints. The F1 transformer has the I2V one's architecture:
# only the sampling loop (the pipeline's mode) tells them apart.
OFFICIAL_CONFIGS: dict[type[PretrainedModel], Callable[[], ModelConfig]] = {
    FramePackTransformer: lambda: TransformerConfig.preset("framepack"),
    LlamaTextEncoder: lambda: LlamaConfig.preset("llava-llama-3-8b"),
    CLIPTextEncoder: lambda: CLIPTextConfig.preset("clip-vit-large-patch14"),
    SiglipImageEncoder: lambda: SiglipVisionConfig.preset("siglip-so400m-patch14-384"),
    HunyuanVideoVAE: lambda: VAEConfig.preset("hunyuan"),
}

# CLIPTextModelWithProjection / CLIPModel tensors some clip_l files carry; HunyuanVideo pools without them.
_CLIP_EXTRAS = frozenset({"text_projection.weight", "logit_scale"})


def load_single_file(
    cls: type[ModelT],
    path: str | os.PathLike[str],
    *,
    config: ModelConfig | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    storage: Storage = "copy",
    fp8_block: int | None = None,
) -> ModelT:
    """A ``cls`` model filled from the single file ``path``; ``config`` defaults to the official one.
    ``fp8_block`` quantizes the model's ``fp8_quantizable`` weights as they load (``load_checkpoint``)."""
    if cls not in OFFICIAL_CONFIGS:
        raise ConfigError(f"no single-file layout is known for {cls.__name__}; expected one of {_class_names()}")
    official = config is None
    config = OFFICIAL_CONFIGS[cls]() if config is None else config
    if not isinstance(config, cls.config_class):
        raise ConfigError(f"config: {cls.__name__} takes a {cls.config_class.__name__}, got {type(config).__name__}")
    path = Path(path)
    file = SafetensorsFile(path)
    read_as = ""
    try:
        read_as, rename = _reader(cls, set(file.entries), config)
        rekey(file, rename)
        with torch.device("meta"):
            model = cls(config)  # type: ignore[call-arg]
        device = torch.device(device)
        load_checkpoint(
            model, [file], dtype=dtype or default_dtype(device), device=device, storage=storage, fp8_block=fp8_block
        )
    except CheckpointError as e:
        file.close()
        notes = [f"read as {read_as}"] if read_as else []
        if official:
            notes.append("with the official config: a single file carries none; pass config= for another")
        raise CheckpointError(f"{path}: {e}" + (f" ({'; '.join(notes)})" if notes else "")) from e
    except BaseException:
        file.close()
        raise
    logger.info("loaded %s from %s (%s)", cls.__name__, path, read_as)
    return model.eval()


def rekey(file: SafetensorsFile, rename: Rename) -> None:
    """Rename, reshape or leave out the tensors of an open file, in its header, before any is read."""
    entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
    source: dict[str, str] = {}
    for key, (dtype, shape, begin, end) in file.entries.items():
        renamed = rename(key, shape)
        if renamed is None:
            continue
        new_key, new_shape = renamed
        if new_key in source:
            raise CheckpointError(
                f"tensors {source[new_key]!r} and {key!r} of {file.path.name} both read as {new_key!r}"
            )
        entries[new_key] = (dtype, new_shape, begin, end)
        source[new_key] = key
    file.entries = entries


def _reader(cls: type[PretrainedModel], keys: set[str], config: ModelConfig) -> tuple[str, Rename]:
    """How to read a file of ``cls``: a description of its names and the renaming."""
    if cls is LlamaTextEncoder:
        return "LlamaForCausalLM names", _llama_key
    if cls is CLIPTextEncoder:
        return "CLIPTextModel names", lambda key, shape: None if key in _CLIP_EXTRAS else (key, shape)
    if cls is HunyuanVideoVAE and vae_layout(keys) == "ldm":
        levels = len(config.block_out_channels)  # type: ignore[attr-defined]
        return "ComfyUI's LDM VAE names", lambda key, shape: ldm_to_diffusers(key, shape, levels)
    names = {FramePackTransformer: "diffusers", SiglipImageEncoder: "SiglipVisionModel", HunyuanVideoVAE: "diffusers"}
    return f"{names[cls]} names", lambda key, shape: (key, shape)


def _llama_key(key: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]] | None:
    # LlamaForCausalLM = LlamaModel under ``model.`` + the output head, which a text encoder never uses.
    # Some repackaged files also carry the tokenizer as a tensor.
    if key == "lm_head.weight" or key.split(".")[0].startswith("tokenizer"):
        return None
    return key.removeprefix("model."), shape


def _class_names() -> list[str]:
    return sorted(c.__name__ for c in OFFICIAL_CONFIGS)
