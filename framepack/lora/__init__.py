"""LoRA files: read every format in circulation (``formats``) and place their pairs on a model (``resolve``).

``FramePackTransformer.add_lora`` (framepack.models.lora_methods) applies them at run time.
"""

from __future__ import annotations

from .formats import LoraPair, LoraWeights, load_lora

__all__ = ["LoraPair", "LoraWeights", "load_lora"]
