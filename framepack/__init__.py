"""framepack: FramePack image-to-video in pure PyTorch.

Public names are imported lazily so that ``import framepack`` stays cheap (no torch until used).
"""

from __future__ import annotations

from .lazy import lazy_exports

_EXPORTS = {
    "FramePackError": "framepack.errors",
    "CheckpointError": "framepack.errors",
    "ConfigError": "framepack.errors",
    "InputError": "framepack.errors",
    "NumericalError": "framepack.errors",
    "OutputError": "framepack.errors",
    "GenerationCancelled": "framepack.errors",
    "GenerationInterrupted": "framepack.errors",
    "Conditioning": "framepack.conditioning",
    "PackedContext": "framepack.conditioning",
    "FramePackPipeline": "framepack.pipeline",
    "GenerationRun": "framepack.pipeline",
    "EncodedInputs": "framepack.pipeline",
    "GenerationConfig": "framepack.config",
    "VideoResult": "framepack.results",
    "SectionOutput": "framepack.results",
    "I2V_REPO": "framepack.components",
    "F1_REPO": "framepack.components",
    "HUNYUAN_REPO": "framepack.components",
    "REDUX_REPO": "framepack.components",
    "FramePackTransformer": "framepack.models.transformer",
    "TransformerConfig": "framepack.models.transformer",
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
    "encode_prompt": "framepack.prompt",
    "PromptEmbeddings": "framepack.prompt",
    "build_conditioning": "framepack.prompt",
    "generate_latents": "framepack.sampling.loop",
    "stream_latents": "framepack.sampling.loop",
    "SectionResult": "framepack.sampling.loop",
    "Progress": "framepack.sampling.loop",
    "plan_sections": "framepack.sampling.sections",
    "SectionPlan": "framepack.sampling.sections",
    "sample_unipc": "framepack.sampling.unipc",
    "flux_sigmas": "framepack.sampling.schedule",
    "CachePolicy": "framepack.cache",
    "NoCache": "framepack.cache",
    "TeaCache": "framepack.cache",
    "MagCache": "framepack.cache",
    "FirstBlockCache": "framepack.cache",
    "parse_cache_spec": "framepack.cache",
    "LayerStreamer": "framepack.memory.streamer",
    "plan_residency": "framepack.memory.streamer",
    "plan_pipeline_memory": "framepack.memory.planner",
    "MemoryPlan": "framepack.memory.planner",
    "load_image": "framepack.video",
    "find_bucket": "framepack.video",
    "resize_image": "framepack.video",
    "Mp4Writer": "framepack.video",
    "write_mp4": "framepack.video",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
