"""The neural networks: FramePack transformer, HunyuanVideo VAE, and the three encoders.

Names are exported lazily: the memory package's low layer, which the models import,
is itself imported by ``framepack.memory.placement``, which imports the models.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "FramePackTransformer": "framepack.models.transformer",
    "TransformerConfig": "framepack.models.transformer",
    "packed_tokens": "framepack.models.packing",
    "HunyuanVideoVAE": "framepack.models.vae",
    "VAEConfig": "framepack.models.vae",
    "VAETiling": "framepack.models.vae",
    "decode_preview": "framepack.models.vae_preview",
    "LlamaTextEncoder": "framepack.models.llama",
    "LlamaConfig": "framepack.models.llama",
    "CLIPTextEncoder": "framepack.models.clip",
    "CLIPTextConfig": "framepack.models.clip",
    "SiglipImageEncoder": "framepack.models.siglip",
    "SiglipVisionConfig": "framepack.models.siglip",
    "LlamaTokenizer": "framepack.models.tokenizers",
    "CLIPTokenizer": "framepack.models.tokenizers",
    "StreamableModel": "framepack.models.streaming",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
