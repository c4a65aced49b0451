"""The memory side of a cost estimate: the planner's plan for a budget, from configs alone.

The five models are built on the ``meta`` device (shapes and dtypes, no memory), so
``memory.planner.plan_memory`` and its component sizes and activation estimates run on
them exactly as on loaded models: the estimate and a run plan the same bytes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..components import tiny_configs
from ..memory.planner import MemoryPlan, activation_estimates, component_sizes, plan_memory
from ..memory.residency import ComponentSize
from ..models.clip import CLIPTextConfig, CLIPTextEncoder
from ..models.fp8 import FP8
from ..models.linear import Linear
from ..models.llama import LlamaConfig, LlamaTextEncoder
from ..models.siglip import SiglipImageEncoder, SiglipVisionConfig
from ..models.transformer import FramePackTransformer, TransformerConfig
from ..models.vae import HunyuanVideoVAE, VAEConfig
from .meta import build_on_meta, meta_model


@dataclass(frozen=True)
class ModelConfigs:
    """The configs of the five models of a pipeline."""

    name: str
    transformer: TransformerConfig
    vae: VAEConfig
    text_encoder: LlamaConfig
    text_encoder_2: CLIPTextConfig
    image_encoder: SiglipVisionConfig

    @classmethod
    def real(cls) -> ModelConfigs:
        """The released FramePack models: the 13B transformer, HunyuanVideo's VAE and encoders, SigLIP."""
        return cls(
            "framepack",
            TransformerConfig.preset("framepack"),
            VAEConfig.preset("hunyuan"),
            LlamaConfig.preset("llava-llama-3-8b"),
            CLIPTextConfig.preset("clip-vit-large-patch14"),
            SiglipVisionConfig.preset("siglip-so400m-patch14-384"),
        )

    @classmethod
    def tiny(cls, transformer: TransformerConfig | None = None) -> ModelConfigs:
        """``FramePackPipeline.tiny``'s models; ``transformer`` swaps in another transformer config."""
        configs = tiny_configs()
        return cls(
            "tiny" if transformer is None else "tiny + custom transformer",
            transformer or configs["transformer"],  # type: ignore[arg-type]
            configs["vae"],  # type: ignore[arg-type]
            configs["text_encoder"],  # type: ignore[arg-type]
            configs["text_encoder_2"],  # type: ignore[arg-type]
            configs["image_encoder"],  # type: ignore[arg-type]
        )

    @classmethod
    def of(cls, modules: Mapping[str, nn.Module], name: str) -> ModelConfigs:
        """The configs of loaded models (``Components.modules()``)."""
        return cls(
            name,
            *(modules[n].config for n in ("transformer", "vae", "text_encoder", "text_encoder_2", "image_encoder")),
        )

    def meta_modules(
        self, transformer_dtype: torch.dtype, dtype: torch.dtype, fp8: bool = False
    ) -> dict[str, nn.Module]:
        """The models on the meta device: the transformer in ``transformer_dtype`` (block Linears
        in block-scaled fp8 with ``fp8``), the others in ``dtype``. Built once per set of
        arguments (seconds for the real models): callers only read them."""
        return _meta_modules(self, transformer_dtype, dtype, fp8)


@functools.lru_cache(maxsize=8)
def _meta_modules(
    configs: ModelConfigs, transformer_dtype: torch.dtype, dtype: torch.dtype, fp8: bool
) -> dict[str, nn.Module]:
    def transformer() -> nn.Module:
        module = FramePackTransformer(configs.transformer).to(transformer_dtype)
        if fp8:  # 64 input columns per scale, or the largest block dividing a smaller width (as --tiny does)
            _quantized_shapes(module, block=math.gcd(64, configs.transformer.inner_dim))
        return module

    modules = dict(
        transformer=build_on_meta(transformer),
        vae=meta_model(HunyuanVideoVAE, configs.vae, dtype),
        text_encoder=meta_model(LlamaTextEncoder, configs.text_encoder, dtype),
        text_encoder_2=meta_model(CLIPTextEncoder, configs.text_encoder_2, dtype),
        image_encoder=meta_model(SiglipImageEncoder, configs.image_encoder, dtype),
    )
    return modules


def _quantized_shapes(model: FramePackTransformer, block: int) -> None:
    """The weights and scales ``quantize_fp8(block)`` leaves, as empty meta tensors: quantizing
    itself would compute on meta tensors, whose first kernel imports torch._dynamo (seconds)."""
    for module_name, module in model.named_modules():
        if isinstance(module, Linear) and model.fp8_quantizable(f"{module_name}.weight"):
            out_features, in_features = module.weight.shape
            groups = in_features // block if in_features % block == 0 else 1
            weight = torch.empty(out_features, in_features, dtype=FP8, device="meta")
            module.weight = nn.Parameter(weight, requires_grad=False)
            scale_shape = (out_features, groups, 1) if groups > 1 else (out_features, 1)
            module.weight_scale = torch.empty(scale_shape, dtype=module.compute_dtype, device="meta")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one configuration: the planner's plan, and what the host holds."""

    plan: MemoryPlan
    weight_bytes: dict[str, int]  # every model's bytes in its run dtype
    activation_bytes: dict[str, int]  # per phase, as planned (tiled VAE phases when the plan tiles)
    streamed_bytes_per_call: int  # transformer bytes copied to the device by one pass over its blocks
    host_bytes: int  # host RAM every weight takes with copy storage (mmap: page cache instead)

    @property
    def peak_device_bytes(self) -> int:
        return max(self.plan.phase_device_bytes.values()) + self.plan.reserve_bytes

    @property
    def peak_activation_bytes(self) -> int:
        return max(self.activation_bytes.values())

    @property
    def host_activation_bytes(self) -> int:
        """What a run on the host holds beside the weights at its peak: every phase's working set
        together, as the allocator keeps what a phase freed and the next phase's tensors, of
        other sizes, do not fit in it (measured on this project's CPU: the text, image, sampling
        and decode phases' growths of peak RSS add up, ``benchmarks/cost_validation.py``)."""
        return sum(self.activation_bytes.values())


def estimate_memory(
    models: ModelConfigs,
    *,
    transformer_dtype: torch.dtype,
    dtype: torch.dtype,
    fp8: bool,
    vram_budget_gb: float | None,
    resolution: int,
    window: int,
    device: torch.device,
) -> MemoryEstimate:
    """The plan ``FramePackPipeline`` makes for this budget, and the bytes around it."""
    modules = models.meta_modules(transformer_dtype, dtype, fp8)
    plan = plan_memory(modules, vram_budget_gb, resolution=resolution, window=window, device=device)
    sizes = component_sizes(modules)
    weight_bytes = {n: s.total_bytes if isinstance(s, ComponentSize) else int(s) for n, s in sizes.items()}
    untiled, tiled = activation_estimates(modules, resolution, window)
    activations = {p: tiled[p] if plan.vae_tiling and p in tiled else n for p, n in untiled.items()}
    streaming = plan.streaming.get("transformer")
    streamed = streaming.streamed_bytes if streaming is not None else 0
    # Every tensor, where the plan's sizes leave out what stays on the host (Llama's embedding table).
    host = sum(t.nbytes for m in modules.values() for t in (*m.parameters(), *m.buffers()))
    return MemoryEstimate(plan, weight_bytes, activations, streamed, host)
