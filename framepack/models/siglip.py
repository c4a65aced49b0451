"""SigLIP so400m/14 @384 vision tower (flux_redux_bfl ``image_encoder``) and its preprocessing.

FramePack conditions on the last hidden state (after ``post_layernorm``), 729 patch tokens.
The attention-pooling head of a ``SiglipVisionModel`` checkpoint is never used, so its
keys are ignored on purpose rather than loaded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import ConfigError, InputError
from .configuration import ModelConfig
from .encoder_layers import ENCODER_CHECKPOINT_KEYS, encoder_layers, gelu_tanh
from .loading import KeyRule, PretrainedModel, Storage, read_json, resolve_folder

logger = logging.getLogger("framepack")

_PREFIX = "vision_model."
_PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig(ModelConfig):
    """Fields of ``image_encoder/config.json``."""

    ignored_keys: ClassVar[frozenset[str]] = frozenset(
        {
            "architectures", "model_type", "attention_dropout", "torch_dtype", "dtype",
            "transformers_version", "vision_use_head", "initializer_range",
        }
    )  # fmt: skip

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 384
    num_channels: int = 3
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.hidden_act != "gelu_pytorch_tanh":
            raise ConfigError(f"SiglipVisionConfig: hidden_act must be 'gelu_pytorch_tanh', got {self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"SiglipVisionConfig: hidden_size {self.hidden_size} is not divisible by "
                f"{self.num_attention_heads} heads"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def preset(cls, name: str) -> SiglipVisionConfig:
        """``"siglip-so400m-patch14-384"`` (flux_redux_bfl image_encoder) or ``"tiny"`` (same 384 input)."""
        presets = {
            "siglip-so400m-patch14-384": cls(),
            "tiny": cls(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        }
        if name not in presets:
            raise ConfigError(f"SiglipVisionConfig: unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]


@dataclasses.dataclass(frozen=True)
class SiglipPreprocessing(ModelConfig):
    """``feature_extractor/preprocessor_config.json``; the defaults are the real file's values."""

    ignored_keys: ClassVar[frozenset[str]] = frozenset(
        {"image_processor_type", "processor_class", "do_convert_rgb", "default_to_square", "feature_extractor_type"}
    )

    do_resize: bool = True
    size: Any = dataclasses.field(default_factory=lambda: {"height": 384, "width": 384})
    resample: int = 3  # PIL.Image.BICUBIC
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if self.do_resize and not (isinstance(self.size, dict) and {"height", "width"} <= set(self.size)):
            raise ConfigError(f"SiglipPreprocessing: size must be {{'height': H, 'width': W}}, got {self.size!r}")

    def __call__(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        """An RGB uint8 image [H, W, 3] (array or PIL) -> pixel_values [1, 3, h, w] float32."""
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            described = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
            raise InputError(f"image: expected an RGB uint8 array [H, W, 3] or a PIL image, got {described}")
        if self.do_resize:
            size = (int(self.size["width"]), int(self.size["height"]))
            image = np.asarray(Image.fromarray(image).resize(size, resample=Image.Resampling(self.resample)))
        pixels = image
        if self.do_rescale:
            # float64 product then float32, as the reference rescales.
            pixels = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            pixels = pixels.astype(np.float32)
            pixels = (pixels - np.array(self.image_mean, np.float32)) / np.array(self.image_std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32))[None]


class SiglipEmbeddings(nn.Module):
    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Embedding(config.num_patches, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Row-major patch order: patch index = row * grid + col, matching position_embedding rows.
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        return patches.flatten(2).transpose(1, 2) + self.position_embedding.weight


class SiglipImageEncoder(PretrainedModel):
    """``SiglipVisionModel`` without its pooling head: ``pixel_values -> last_hidden_state [B, 729, D]``."""

    config_class = SiglipVisionConfig
    weights_name = "model"
    optional_key_prefix = _PREFIX

    def __init__(self, config: SiglipVisionConfig, preprocessing: SiglipPreprocessing | None = None) -> None:
        super().__init__()
        self.config = config
        self.preprocessing = preprocessing or SiglipPreprocessing()
        self.embeddings = SiglipEmbeddings(config)
        self.layers = encoder_layers(
            config.num_hidden_layers,
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            eps=config.layer_norm_eps,
            activation=gelu_tanh,
            causal=False,
        )
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        storage: Storage = "copy",
        preprocessor_subfolder: str | None = "feature_extractor",
    ) -> SiglipImageEncoder:
        """Load the weights from ``source/subfolder`` and, when ``source/preprocessor_subfolder``
        holds a preprocessor_config.json, the preprocessing settings from it (else the defaults)."""
        model = super().from_pretrained(
            source, subfolder=subfolder, revision=revision, dtype=dtype, device=device, storage=storage
        )
        if preprocessor_subfolder is not None:
            model.preprocessing = load_preprocessing(source, subfolder=preprocessor_subfolder, revision=revision)
        return model

    def checkpoint_keys(self) -> Sequence[KeyRule]:
        return ENCODER_CHECKPOINT_KEYS

    def ignored_checkpoint_keys(self, available: set[str]) -> set[str]:
        # The pooling head (SiglipVisionModel's default) is not used by FramePack.
        head = self.checkpoint_prefix(available) + "head."
        return {k for k in available if k.startswith(head)}

    def preprocess(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        """RGB uint8 image [H, W, 3] (array or PIL) -> pixel_values [1, 3, 384, 384] float32 on CPU."""
        return self.preprocessing(image)

    def _layers(self) -> Iterator[nn.Module]:
        return iter(self.layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        expected = (self.config.num_channels, size, size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise InputError(
                f"pixel_values: expected [B, {expected[0]}, {size}, {size}], got {list(pixel_values.shape)}"
            )
        h = self.embeddings(pixel_values)
        for layer in self._layers():
            h = layer(h)
        return self.post_layernorm(h)


def load_preprocessing(
    source: str | os.PathLike[str], *, subfolder: str | None = "feature_extractor", revision: str | None = None
) -> SiglipPreprocessing:
    """Preprocessing settings from ``preprocessor_config.json``; the real defaults if a local folder lacks it."""
    local = Path(source).expanduser()
    if local.exists() and not (local / (subfolder or "") / _PREPROCESSOR_FILE).exists():
        folder = local / (subfolder or "")
        logger.info("no %s in %s; using SigLIP's default preprocessing", _PREPROCESSOR_FILE, folder)
        return SiglipPreprocessing()
    folder = resolve_folder(source, subfolder=subfolder, revision=revision, patterns=(_PREPROCESSOR_FILE,))
    return SiglipPreprocessing.from_dict(read_json(folder / _PREPROCESSOR_FILE))
