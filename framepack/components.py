"""The seven parts of a FramePack pipeline, loaded from the official repos or single files, or built tiny."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from .errors import CheckpointError, ConfigError
from .models.clip import CLIPTextConfig, CLIPTextEncoder
from .models.configuration import ModelConfig
from .models.fp8 import FP8_BLOCK
from .models.llama import LlamaConfig, LlamaTextEncoder
from .models.loading import PretrainedModel, Storage, Weights
from .models.siglip import SiglipImageEncoder, SiglipVisionConfig
from .models.single_file import load_single_file
from .models.tokenizers import CLIPTokenizer, LlamaTokenizer
from .models.transformer import FramePackTransformer, TransformerConfig
from .models.vae import HunyuanVideoVAE, VAEConfig
from .precision import default_dtype
from .tiny import tiny_clip_tokenizer, tiny_llama_tokenizer

I2V_REPO = "lllyasviel/FramePackI2V_HY"
F1_REPO = "lllyasviel/FramePack_F1_I2V_HY_20250503"
HUNYUAN_REPO = "hunyuanvideo-community/HunyuanVideo"
REDUX_REPO = "lllyasviel/flux_redux_bfl"

# The model class of each component a single file holds.
FILE_MODELS: dict[str, type[PretrainedModel]] = {
    "transformer": FramePackTransformer,
    "text_encoder": LlamaTextEncoder,
    "text_encoder_2": CLIPTextEncoder,
    "image_encoder": SiglipImageEncoder,
    "vae": HunyuanVideoVAE,
}

WEIGHT_SAMPLES = 64  # elements of each weight tensor that ``Components.weights_digest`` reads


@dataclass
class Components:
    """Every model and tokenizer a generation needs."""

    transformer: FramePackTransformer
    vae: HunyuanVideoVAE
    text_encoder: LlamaTextEncoder
    text_encoder_2: CLIPTextEncoder
    image_encoder: SiglipImageEncoder
    tokenizer: LlamaTokenizer
    tokenizer_2: CLIPTokenizer

    def modules(self) -> dict[str, nn.Module]:
        """The neural networks by name (tokenizers excluded)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), nn.Module)}

    def weights_digest(self) -> str:
        """A short sha256 of every module's weights: for each parameter and buffer its name,
        dtype, shape and about ``WEIGHT_SAMPLES`` elements at a fixed stride (the last included).

        Two checkpoints of one architecture differ almost everywhere, so the samples tell them
        apart; an edit between the sampled elements goes unseen. Where weights live (device,
        host, memory-mapped) does not change it. Cost: a few small ops per tensor and one copy
        to the host per module and device; memory-mapped weights read the pages holding the samples.
        """
        h = hashlib.sha256()
        for module_name, module in self.modules().items():
            tensors = [*module.named_parameters(), *module.named_buffers()]
            samples = _to_host([_sample(tensor.detach()) for _, tensor in tensors])
            for (name, tensor), sample in zip(tensors, samples):
                h.update(f"{module_name}.{name} {tensor.dtype} {list(tensor.shape)}\n".encode())
                if type(sample) is torch.Tensor:  # fake weights (framepack.dry_run) have shapes, no values
                    h.update(sample.numpy().tobytes())
        return h.hexdigest()[:32]


def _sample(tensor: torch.Tensor) -> torch.Tensor:
    """About ``WEIGHT_SAMPLES`` elements of ``tensor`` at a fixed stride, plus its last, as bytes."""
    numel = tensor.numel()
    stride = max(1, -(-numel // WEIGHT_SAMPLES))
    if isinstance(tensor, FakeTensor) and tensor.is_contiguous():
        # No values to sample: a buffer of the sample's bytes, allocated where the sample would be
        # (a dry run counts it), in one fake op instead of the five below (each a slow dispatch).
        return tensor.new_empty((-(-numel // stride) + min(numel, 1)) * tensor.element_size(), dtype=torch.uint8)
    flat = tensor.reshape(-1)
    return torch.cat([flat[::stride], flat[-1:]]).view(torch.uint8)


def _to_host(samples: list[torch.Tensor]) -> list[torch.Tensor]:
    """``samples`` on the host, in order: those of each device gathered into one copy."""
    out = list(samples)
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, sample in enumerate(samples):
        if sample.device.type != "cpu":
            by_device[sample.device].append(i)
    for indices in by_device.values():
        gathered = torch.cat([samples[i] for i in indices]).cpu()
        for i, part in zip(indices, gathered.split([samples[i].numel() for i in indices])):
            out[i] = part
    return out


def component_dtypes(device: torch.device, dtype: torch.dtype | None) -> tuple[torch.dtype, torch.dtype]:
    """(transformer dtype, encoders and VAE dtype).

    The transformer computes in ``dtype``, else ``precision.default_dtype(device)``. The
    encoders and the VAE follow it, except that on an accelerator a 16-bit transformer gets
    them in float16, as the reference loads them.
    """
    main = dtype or default_dtype(device)
    half = device.type != "cpu" and main in (torch.bfloat16, torch.float16)
    return main, torch.float16 if half else main


def load_components(
    *,
    transformer: str | os.PathLike[str] = I2V_REPO,
    hunyuan: str | os.PathLike[str] = HUNYUAN_REPO,
    redux: str | os.PathLike[str] = REDUX_REPO,
    device: torch.device,
    dtype: torch.dtype | None = None,
    storage: Storage = "copy",
    load_device: torch.device | None = None,
    weights: Weights = None,
) -> Components:
    """Load every component; ``hunyuan`` and ``redux`` are repos (or folders) with the subfolders
    of ``hunyuanvideo-community/HunyuanVideo`` and ``lllyasviel/flux_redux_bfl``.

    ``load_device`` is where weights land (the host when the pipeline will swap or stream them).
    ``weights="fp8"`` stores the transformer's block Linears in fp8 (``FramePackTransformer.from_pretrained``).
    """
    main_dtype, side_dtype = component_dtypes(device, dtype)
    where = load_device or device
    common = dict(device=where, storage=storage)
    return Components(
        transformer=FramePackTransformer.from_pretrained(transformer, dtype=main_dtype, weights=weights, **common),
        vae=HunyuanVideoVAE.from_pretrained(hunyuan, subfolder="vae", dtype=side_dtype, **common),
        text_encoder=LlamaTextEncoder.from_pretrained(hunyuan, subfolder="text_encoder", dtype=side_dtype, **common),
        text_encoder_2=CLIPTextEncoder.from_pretrained(hunyuan, subfolder="text_encoder_2", dtype=side_dtype, **common),
        image_encoder=SiglipImageEncoder.from_pretrained(redux, subfolder="image_encoder", dtype=side_dtype, **common),
        tokenizer=LlamaTokenizer.from_pretrained(hunyuan, subfolder="tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(hunyuan, subfolder="tokenizer_2"),
    )


def load_components_from_files(
    *,
    transformer: str | os.PathLike[str],
    text_encoder: str | os.PathLike[str],
    text_encoder_2: str | os.PathLike[str],
    image_encoder: str | os.PathLike[str],
    vae: str | os.PathLike[str],
    tokenizers: str | os.PathLike[str] = HUNYUAN_REPO,
    device: torch.device,
    dtype: torch.dtype | None = None,
    storage: Storage = "copy",
    load_device: torch.device | None = None,
    configs: Mapping[str, ModelConfig] | None = None,
    weights: Weights = None,
) -> Components:
    """Load every model from its single safetensors file (see ``framepack.models.single_file``);
    the tokenizers from ``tokenizers``, a repo or folder with the ``tokenizer/`` and
    ``tokenizer_2/`` subfolders of ``hunyuanvideo-community/HunyuanVideo``.

    ``configs`` maps a component name to its config where it is not the official one (tiny
    test models); dtypes, ``load_device`` and ``weights`` are as in ``load_components``.
    """
    files = dict(
        transformer=transformer, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        image_encoder=image_encoder, vae=vae,
    )  # fmt: skip
    configs = dict(configs or {})
    unknown = sorted(set(configs) - set(FILE_MODELS))
    if unknown:
        raise ConfigError(f"configs: unknown component(s) {unknown}; expected some of {list(FILE_MODELS)}")
    missing = [f"{name} {str(path)!r}" for name, path in files.items() if not Path(path).is_file()]
    if missing:
        raise CheckpointError(f"no such file: {', '.join(missing)}")
    # Tokenizers first: a wrong folder fails in a moment, before gigabytes of weights are read.
    tokenizer = LlamaTokenizer.from_pretrained(tokenizers, subfolder="tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(tokenizers, subfolder="tokenizer_2")
    main_dtype, side_dtype = component_dtypes(device, dtype)
    models = {
        name: load_single_file(
            cls,
            files[name],
            config=configs.get(name),
            dtype=main_dtype if name == "transformer" else side_dtype,
            device=load_device or device,
            storage=storage,
            fp8_block=FP8_BLOCK if weights == "fp8" and name == "transformer" else None,
        )
        for name, cls in FILE_MODELS.items()
    }
    return Components(**models, tokenizer=tokenizer, tokenizer_2=tokenizer_2)


def tiny_configs() -> dict[str, ModelConfig]:
    """The config of every tiny model, by component name (the transformer sized to the encoders)."""
    llama_config = LlamaConfig.preset("tiny")
    clip_config = CLIPTextConfig.preset("tiny")
    siglip_config = SiglipVisionConfig.preset("tiny")
    transformer_config = TransformerConfig.preset(
        "tiny",
        text_embed_dim=llama_config.hidden_size,
        pooled_projection_dim=clip_config.hidden_size,
        image_proj_dim=siglip_config.hidden_size,
    )
    return dict(
        transformer=transformer_config,
        vae=VAEConfig.preset("tiny"),
        text_encoder=llama_config,
        text_encoder_2=clip_config,
        image_encoder=siglip_config,
    )


def tiny_components(seed: int = 0, *, device: torch.device | str = "cpu") -> Components:
    """Every component built from tiny random configs: the offline demo and test fixture.

    Initialisation draws from a private RNG state, so building one leaves the caller's
    global torch RNG untouched.
    """
    configs = tiny_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        models = dict(
            transformer=FramePackTransformer(configs["transformer"]),
            vae=HunyuanVideoVAE(configs["vae"]),
            text_encoder=LlamaTextEncoder(configs["text_encoder"]),
            text_encoder_2=CLIPTextEncoder(configs["text_encoder_2"]),
            image_encoder=SiglipImageEncoder(configs["image_encoder"]),
        )
    for model in models.values():
        model.to(device).eval().requires_grad_(False)
    return Components(**models, tokenizer=tiny_llama_tokenizer(), tokenizer_2=tiny_clip_tokenizer())
