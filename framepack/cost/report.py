"""The two lines ``framepack generate`` prints: the prediction before the run, the measurement after."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..prompt import HUNYUAN_VIDEO_TEMPLATE, MAX_PROMPT_TOKENS, TEMPLATE_CROP_START
from ..units import format_bytes
from .estimate import CostEstimate, estimate, format_seconds
from .memory import ModelConfigs
from .profiles import device_profile

if TYPE_CHECKING:
    from ..config import GenerationConfig
    from ..pipeline import FramePackPipeline


def prompt_tokens(pipe: FramePackPipeline, prompt: str) -> int:
    """The prompt's tokens the transformer sees: the templated prompt after the template's head, at most the maximum."""
    tokens = pipe.components.tokenizer(
        HUNYUAN_VIDEO_TEMPLATE.format(prompt), max_length=MAX_PROMPT_TOKENS + TEMPLATE_CROP_START
    )
    return max(int(tokens.length) - TEMPLATE_CROP_START, 1)


def predict_run(
    pipe: FramePackPipeline, config: GenerationConfig, image: np.ndarray, prompt: str, vram_budget_gb: float | None
) -> CostEstimate:
    """The estimate for this loaded pipeline (weights already loaded: no load time), from table
    rates: the CPU's on the CPU, the RTX 4090's on a GPU (the line names the profile). Not
    ``measure_profile``: its probes build a VAE and blocks at the run's shapes on the device,
    which an 8 GB card already holding the run's plan has no room for (``plan --measure`` does it)."""
    transformer = pipe.components.transformer
    models = ModelConfigs.of(pipe.components.modules(), "loaded")
    profile = device_profile("cpu" if pipe.device.type == "cpu" else "rtx4090")
    return estimate(
        config,
        profile,
        models=models,
        image_size=image.shape[:2],
        text_tokens=prompt_tokens(pipe, prompt),
        vram_budget_gb=None if pipe.device.type == "cpu" else vram_budget_gb,
        dtype=transformer.dtype,
        from_disk=False,
    )


def prediction_line(predicted: CostEstimate) -> str:
    s = predicted.seconds
    peak = predicted.memory.host_activation_bytes if predicted.profile.is_host else predicted.memory.peak_device_bytes
    return (
        f"predicted: {format_seconds(s.total)} ({predicted.profile.name}, {predicted.profile.source} rates: "
        f"encoders {format_seconds(s.encoders)}, sampling {format_seconds(s.sampling)}, "
        f"VAE decode {format_seconds(s.decode)}), peak {'host RAM beside the weights' if predicted.profile.is_host else 'device'} "
        f"{format_bytes(peak)}"
    )


def measured_line(predicted: CostEstimate, seconds: float) -> str:
    return (
        f"measured:  {format_seconds(seconds)} (predicted {format_seconds(predicted.seconds.total)}, "
        f"measured/predicted {seconds / predicted.seconds.total:.2f})"
    )
