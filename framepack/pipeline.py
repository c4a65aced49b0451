"""FramePackPipeline: image + prompt in, mp4 out, one section at a time.

The only module that knows every part: it encodes the inputs (bucket and resize, VAE,
SigLIP, Llama + CLIP), runs the section loop of ``sampling``, decodes each finished section,
blends it into the video on disk and saves what a resumed run needs.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache.spec import describe_policy
from .comfyui import Mode, find_comfyui_files, transformer_mode
from .components import (
    F1_REPO,
    HUNYUAN_REPO,
    I2V_REPO,
    REDUX_REPO,
    Components,
    load_components,
    load_components_from_files,
    tiny_components,
)
from .conditioning import Conditioning
from .config import GenerationConfig
from .device_runtime import runtime
from .distributed.launch import Parallel, check_guidance
from .distributed.ulysses import UlyssesParallel
from .errors import ConfigError, InputError
from .keyframes import KeyframeKey, check_keyframes, keyframe_coverage
from .lora import LoraWeights
from .memory.placement import Placement, device_budget_gb
from .memory.planner import MemoryPlan, plan_memory
from .models.compiled import CompiledBlocks
from .models.configuration import ModelConfig
from .models.loading import Storage, Weights
from .models.vae import VAETiling
from .prompt import PromptEmbeddings, build_conditioning, encode_prompt
from .prompt_schedule import PromptSchedule, SectionPrompts, as_prompt, resolve_prompt
from .results import SectionOutput, VideoResult
from .run_settings import mp4_metadata, settings_record, write_settings_json
from .rundir import RunDirLock, claim_run_dir
from .runstate import STATE_FILE, RunState, check_fingerprint, digest, load_run_state, save_run_state
from .sampling.control import SectionControl, SectionText
from .sampling.loop import Progress, SectionResult, SectionTransformer, stream_latents
from .sampling.sections import plan_sections
from .video import FrameAssembler, PreviewWriter, find_bucket, load_image, resize_image
from .video.blending import pixels_to_uint8

logger = logging.getLogger("framepack")

ImageInput = Any  # a path, PIL image or uint8 array; see framepack.video.load_image
Keyframes = Mapping[KeyframeKey, ImageInput]  # section index (int) or seconds (float) -> image

__all__ = ["F1_REPO", "I2V_REPO", "EncodedInputs", "FramePackPipeline"]


@dataclass(frozen=True)
class EncodedInputs:
    """Everything the section loop needs, computed once per video."""

    image: np.ndarray  # the start image after bucketing and resizing, uint8 (H, W, 3)
    start_latent: torch.Tensor
    conditioning: Conditioning
    negative: Conditioning | None
    end_image: np.ndarray | None
    end_latent: torch.Tensor | None
    end_image_embeds: torch.Tensor | None
    dropped_tokens: int  # the most Llama tokens cut from one prompt
    control: SectionControl | None = None  # what changes per section (prompts, keyframes); None: nothing
    keyframes: tuple[tuple[int, np.ndarray], ...] = ()  # (video section, resized image), by section

    def sample(self, transformer: SectionTransformer, config: GenerationConfig, **loop: Any) -> Iterator[SectionResult]:
        """``stream_latents`` on these inputs (``loop``: its generator, callback, resume and
        branches): one mapping, so that a parallel run's ranks sample exactly as rank 0 does."""
        return stream_latents(
            transformer,
            self.conditioning,
            self.start_latent,
            config,
            negative=self.negative,
            end_latent=self.end_latent,
            end_image_embeds=self.end_image_embeds,
            control=self.control,
            **loop,
        )


class FramePackPipeline:
    """Wires the encoders, VAE, transformer, sampler and video output together."""

    def __init__(
        self, components: Components, *, device: torch.device | str = "cpu", parallel: Parallel | None = None
    ) -> None:
        self.components = components
        self.device = torch.device(device)
        self.parallel: Parallel | None = None
        self.use_parallel(parallel)
        self._placement: Placement | None = None
        self._budget_arguments: tuple[float | None, int, int] | None = None  # set_vram_budget's last
        # Where the weights came from, for the settings every video records (framepack.run_settings).
        self.sources: dict[str, Any] = {"kind": "components"}

    # --- construction -----------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        transformer: str | os.PathLike[str] = I2V_REPO,
        *,
        hunyuan: str | os.PathLike[str] = HUNYUAN_REPO,
        redux: str | os.PathLike[str] = REDUX_REPO,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        storage: Storage = "copy",
        weights: Weights = None,
        vram_budget_gb: float | None = None,
        resolution: int = 640,
        window: int = 9,
        loras: Sequence[tuple[str | os.PathLike[str], float]] = (),
    ) -> FramePackPipeline:
        """Load the official checkpoints (or local folders laid out like them).

        transformer     ``I2V_REPO`` (inverted mode, the default) or ``F1_REPO`` (forward mode)
        device          default: cuda when available, else cpu (float32 on cpu)
        dtype           transformer dtype on accelerators (default bf16; fp16 for cards without bf16)
        storage         "mmap" keeps weights memory-mapped from the files (host RAM below the model size)
        weights         "fp8": the transformer's block Linears in fp8, block-scaled (fp8 files load as fp8 anyway)
        vram_budget_gb  device memory to stay within (see ``set_vram_budget``); None: on CUDA the
                        memory free on the device, elsewhere no budget (all resident)
        loras           (LoRA file, strength) pairs applied to the transformer at run time (``add_lora``)
        """
        device, budgeted = _load_target(device, vram_budget_gb)
        components = load_components(
            transformer=transformer,
            hunyuan=hunyuan,
            redux=redux,
            device=device,
            dtype=dtype,
            storage=storage,
            weights=weights,
            load_device=torch.device("cpu") if budgeted else None,
        )
        pipe = cls._assemble(components, device, loras, vram_budget_gb, resolution, window, budgeted=budgeted)
        pipe.sources = {
            "kind": "pretrained",
            **{name: os.fspath(source) for name, source in (("transformer", transformer), ("hunyuan", hunyuan),
                                                            ("redux", redux))},
            "weights": weights,
        }  # fmt: skip
        return pipe

    @classmethod
    def from_files(
        cls,
        *,
        transformer: str | os.PathLike[str],
        text_encoder: str | os.PathLike[str],
        text_encoder_2: str | os.PathLike[str],
        image_encoder: str | os.PathLike[str],
        vae: str | os.PathLike[str],
        tokenizers: str | os.PathLike[str] = HUNYUAN_REPO,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        storage: Storage = "copy",
        vram_budget_gb: float | None = None,
        mode: Mode | None = None,
        resolution: int = 640,
        window: int = 9,
        configs: Mapping[str, ModelConfig] | None = None,
        weights: Weights = None,
        loras: Sequence[tuple[str | os.PathLike[str], float]] = (),
    ) -> FramePackPipeline:
        """Load every model from the single safetensors file users have, as ComfyUI keeps them.

        transformer     ``FramePackI2V_HY_bf16``/``_fp8_e4m3fn`` or ``FramePack_F1_I2V_HY_*`` (same architecture)
        text_encoder    ``llava_llama3_fp16``; text_encoder_2 ``clip_l``; image_encoder
                        ``sigclip_vision_patch14_384``; vae ``hunyuan_video_vae_bf16`` (either layout)
        tokenizers      a repo or folder with HunyuanVideo's ``tokenizer/`` and ``tokenizer_2/``
        mode            the mode the videos will be made in: a transformer whose file name says it
                        was trained for the other one is logged as a warning
        configs         component name -> config, where it is not the official one (single files carry none)
        The other arguments are those of ``from_pretrained`` (an fp8 file loads as fp8 without ``weights``).
        """
        named = transformer_mode(transformer)
        if mode is not None and named is not None and named != mode:
            logger.warning("%s is named as a %s-mode model, but the mode is %s", transformer, named, mode)
        device, budgeted = _load_target(device, vram_budget_gb)
        components = load_components_from_files(
            transformer=transformer,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            image_encoder=image_encoder,
            vae=vae,
            tokenizers=tokenizers,
            device=device,
            dtype=dtype,
            storage=storage,
            load_device=torch.device("cpu") if budgeted else None,
            configs=configs,
            weights=weights,
        )
        pipe = cls._assemble(components, device, loras, vram_budget_gb, resolution, window, budgeted=budgeted)
        files = dict(transformer=transformer, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                     image_encoder=image_encoder, vae=vae, tokenizers=tokenizers)  # fmt: skip
        pipe.sources = {"kind": "files", **{name: os.fspath(path) for name, path in files.items()}, "weights": weights}
        return pipe

    @classmethod
    def from_comfyui(
        cls,
        models_dir: str | os.PathLike[str],
        *,
        mode: Mode | None = None,
        tokenizers: str | os.PathLike[str] = HUNYUAN_REPO,
        transformer: str | os.PathLike[str] | None = None,
        text_encoder: str | os.PathLike[str] | None = None,
        text_encoder_2: str | os.PathLike[str] | None = None,
        image_encoder: str | os.PathLike[str] | None = None,
        vae: str | os.PathLike[str] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        storage: Storage = "copy",
        vram_budget_gb: float | None = None,
        resolution: int = 640,
        window: int = 9,
        configs: Mapping[str, ModelConfig] | None = None,
        weights: Weights = None,
        loras: Sequence[tuple[str | os.PathLike[str], float]] = (),
    ) -> FramePackPipeline:
        """Load from a ComfyUI ``models`` folder: each file found by its usual name in its usual
        sub-folder (see ``framepack.comfyui``), unless passed here. ``mode`` picks the transformer
        when both are there (inverted: I2V, forward: F1); other arguments as ``from_files``.
        A missing file, or two candidates for one, is a CheckpointError before any weight is read."""
        given = dict(
            transformer=transformer, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            image_encoder=image_encoder, vae=vae,
        )  # fmt: skip
        files = find_comfyui_files(models_dir, mode=mode, given=given)
        return cls.from_files(
            **files,
            tokenizers=tokenizers,
            mode=mode,
            device=device,
            dtype=dtype,
            storage=storage,
            vram_budget_gb=vram_budget_gb,
            resolution=resolution,
            window=window,
            configs=configs,
            weights=weights,
            loras=loras,
        )

    @classmethod
    def _assemble(
        cls,
        components: Components,
        device: torch.device,
        loras: Sequence[tuple[str | os.PathLike[str], float]],
        vram_budget_gb: float | None,
        resolution: int,
        window: int,
        *,
        budgeted: bool,
    ) -> FramePackPipeline:
        """The pipeline over loaded ``components``: LoRAs added, then the memory plan made when budgeted."""
        pipe = cls(components, device=device)
        for path, strength in loras:  # before the plan, which counts their bytes in the blocks
            components.transformer.add_lora(path, strength)
        if budgeted:
            pipe.set_vram_budget(vram_budget_gb, resolution=resolution, window=window)
        return pipe

    @classmethod
    def tiny(cls, seed: int = 0, *, device: torch.device | str = "cpu") -> FramePackPipeline:
        """Every component tiny and random: runs offline in seconds; the videos are noise."""
        pipe = cls(tiny_components(seed, device=device), device=device)
        pipe.sources = {"kind": "tiny", "seed": seed}
        return pipe

    # --- memory -----------------------------------------------------------------------
    def set_vram_budget(self, vram_budget_gb: float | None, *, resolution: int = 640, window: int = 9) -> MemoryPlan:
        """Place every component to stay within ``vram_budget_gb`` GiB of device memory.

        One number decides it all: which transformer and Llama blocks stream (the rest stay
        resident), whether components swap on and off the device per phase (text, image,
        sampling, decode), and whether the VAE tiles. Weights must be on the host (load with
        ``vram_budget_gb`` or on the cpu). On CUDA the budget is capped at the free device
        memory, and ``None`` means that free memory; elsewhere ``None`` keeps everything resident.
        """
        if self._placement is not None:
            self._placement.release()
            self._placement = None  # its unloads gave the memory back: it counts as free below
        self._budget_arguments = (vram_budget_gb, resolution, window)
        budget = device_budget_gb(self.device, vram_budget_gb)
        plan = plan_memory(self.components.modules(), budget, resolution=resolution, window=window, device=self.device)
        self._placement = Placement(self.components.modules(), self.device, plan)
        logger.info("memory plan: %s", plan)
        return plan

    def _plan_covers(self, config: GenerationConfig) -> None:
        """Make the memory plan in force again when it was made for a smaller run than ``config``'s
        (a lower resolution or a shorter window: a queue's later job, a call after ``set_vram_budget``),
        for the larger of each; activations grow with both, so a smaller run keeps the plan. Every
        run encodes first (``encode``), so every run passes here before its first phase."""
        if self._budget_arguments is None:
            return
        budget, resolution, window = self._budget_arguments
        if config.resolution > resolution or config.window > window:
            self.set_vram_budget(
                budget, resolution=max(resolution, config.resolution), window=max(window, config.window)
            )

    # --- several processes -----------------------------------------------------------------
    def use_parallel(self, parallel: Parallel | None) -> None:
        """Generate together with the other ranks of ``parallel`` (``framepack.distributed.launch.plan``),
        or alone (None). Every rank calls ``generate`` with the same arguments; rank 0 returns the
        video and writes every file, the others sample in step with it and return None.
        ``jobs`` parallelism changes nothing here: each rank generates its own videos."""
        transformer = self.components.transformer
        transformer.sequence_parallel = None
        if parallel is not None and parallel.sequence_size > 1:
            sequence = UlyssesParallel(parallel.sequence_group)
            sequence.check_heads(transformer.config.num_attention_heads)
            if transformer.compiled_blocks is not None:
                raise ConfigError("sequence parallelism runs eager blocks: do not compile the transformer (--compile)")
            transformer.sequence_parallel = sequence
        self.parallel = parallel

    def _samples_for_rank_0(self) -> bool:
        """True on the ranks that sample in step with rank 0 and write nothing."""
        return self.parallel is not None and self.parallel.mode != "jobs" and not self.parallel.is_writer

    def _check_parallel_guidance(self, config: GenerationConfig) -> None:
        if self.parallel is not None:
            check_guidance(self.parallel.mode, config.real_cfg)

    def _follow(
        self, image: ImageInput | None, prompt: str | PromptSchedule, config: GenerationConfig, **given: Any
    ) -> None:
        """A rank other than 0: the same encoding and sampling as rank 0's run, nothing written."""
        inputs = self.encode(image, as_prompt(prompt), config, **given)
        sections = inputs.sample(
            self.components.transformer,
            config,
            generator=torch.Generator("cpu").manual_seed(config.seed),  # the same noise as rank 0
            branches=self.parallel.branches,
        )
        for _ in range(
            plan_sections(config.seconds, fps=config.fps, window=config.window, mode=config.mode).num_sections
        ):
            with self._phase("sampling"):
                next(sections)

    # --- compiling -----------------------------------------------------------------------
    def compile(self, mode: str = "default") -> CompiledBlocks:
        """Compile the transformer's blocks with ``torch.compile`` (``FramePackTransformer.compile``):
        the first section pays the compilation, every later one reuses it."""
        return self.components.transformer.compile(mode)

    # --- LoRAs --------------------------------------------------------------------------
    def add_lora(
        self, source: str | os.PathLike[str] | LoraWeights, strength: float = 1.0, name: str | None = None
    ) -> str:
        """Apply a LoRA file to the transformer at run time (``FramePackTransformer.add_lora``);
        returns its name. A memory plan in force is made again: the blocks grew."""
        with self._replanned():
            return self.components.transformer.add_lora(source, strength, name)

    def set_lora_strength(self, name: str, strength: float) -> None:
        self.components.transformer.set_lora_strength(name, strength)

    def remove_lora(self, name: str) -> None:
        with self._replanned():
            self.components.transformer.remove_lora(name)

    @contextmanager
    def _replanned(self) -> Iterator[None]:
        """Weights off the device while the transformer's tensors change, then the last plan made again."""
        if self._placement is None:
            yield
            return
        self._placement.release()
        self._placement = None
        try:
            yield
        finally:
            budget, resolution, window = self._budget_arguments
            self.set_vram_budget(budget, resolution=resolution, window=window)

    def memory_report(self) -> str:
        """The memory plan in force and what the streamers moved so far."""
        if self._placement is None:
            return f"no budget: every component resident on {self.device}"
        lines = [str(self._placement.plan)]
        for name, module in self.components.modules().items():
            streamer = getattr(module, "streamer", None)
            if streamer is not None:
                lines.append(f"  {name} streamer: {streamer.stats}")
        return "\n".join(lines)

    def _phase(self, name: str) -> AbstractContextManager[None]:
        return self._placement.phase(name) if self._placement is not None else nullcontext()

    # --- inputs -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self,
        image: ImageInput | None,
        prompt: str | PromptSchedule,
        config: GenerationConfig,
        *,
        end_image: ImageInput | None = None,
        negative_prompt: str = "",
        keyframes: Keyframes | None = None,
        size: tuple[int, int] | None = None,
    ) -> EncodedInputs:
        """Bucket and resize the image(s), encode them (VAE and SigLIP) and the prompt(s).

        ``image=None`` gives text-to-video: a zero start latent and no image embeddings, at
        the bucket a square image would get. ``end_image`` (inverted mode only) is the last
        frame; ``negative_prompt`` is encoded only for real CFG (``config.real_cfg != 1``).
        ``keyframes`` (inverted mode only, see ``framepack.keyframes``) are fitted like the end
        image and encoded once each; SigLIP only with ``config.keyframe_embeds``. A prompt schedule
        (or a string in its form) encodes each distinct prompt once. ``size`` (height, width) fits
        the images to that size instead of their bucket: the size of a video being continued
        (``framepack.extension``).
        """
        check_inputs(
            config,
            end_image=end_image,
            negative_prompt=negative_prompt,
            keyframes=keyframes,
            text_to_video=image is None,
        )
        if size is not None:
            check_frame_size(size)
        plan = plan_sections(config.seconds, fps=config.fps, window=config.window, mode=config.mode)
        keyframe_keys = check_keyframes(keyframes, plan)  # video section -> key
        self._plan_covers(config)
        sections = resolve_prompt(prompt, plan)
        c = self.components
        if image is None:
            height, width = size or find_bucket(1, 1, config.resolution)
            start_image = None
        else:
            source = load_image(image)
            height, width = size or find_bucket(source.shape[0], source.shape[1], config.resolution)
            start_image = resize_image(source, height, width, config.resize)
        with self._phase("text"):
            encoded = [
                encode_prompt(text, c.text_encoder, c.text_encoder_2, c.tokenizer, c.tokenizer_2)
                for text in sections.prompts
            ]
            negative_embeds = None
            if config.real_cfg != 1.0:
                negative_embeds = encode_prompt(
                    negative_prompt, c.text_encoder, c.text_encoder_2, c.tokenizer, c.tokenizer_2
                )
        for text, embeds in zip(sections.prompts, encoded):
            if embeds.dropped_tokens:
                logger.warning("prompt %r is too long: %d token(s) were cut", text[:60], embeds.dropped_tokens)

        end_latent = end_embeds = None
        if end_image is not None:
            end_image = resize_image(load_image(end_image), height, width, config.resize)
        keyframe_images = tuple(
            (section, resize_image(load_image(keyframes[key]), height, width, config.resize))
            for section, key in sorted(keyframe_keys.items())
        )
        with self._phase("image"):
            if start_image is None:
                latent_shape = (1, c.vae.config.latent_channels, 1, height // 8, width // 8)
                start_latent = torch.zeros(latent_shape, device=self.device)
                image_embeds = None
            else:
                start_latent = self._encode_latent(start_image, config)
                image_embeds = self._image_embeds(start_image)
            if end_image is not None:
                end_latent = self._encode_latent(end_image, config)
                end_embeds = self._image_embeds(end_image) if image_embeds is not None else None
            keyframe_control = self._keyframe_control(keyframe_images, plan.num_sections, config)
        # The video's first prompt is the base; a schedule's sections swap in their own (SectionControl).
        conditioning = self._conditioning(build_conditioning(encoded[0], image_embeds, config.distilled_cfg))
        negative = None
        if negative_embeds is not None:
            negative = self._conditioning(build_conditioning(negative_embeds, image_embeds, config.distilled_cfg))
        return EncodedInputs(
            image=start_image if start_image is not None else np.zeros((height, width, 3), np.uint8),
            start_latent=start_latent,
            conditioning=conditioning,
            negative=negative,
            end_image=end_image,
            end_latent=end_latent,
            end_image_embeds=end_embeds,
            dropped_tokens=max(e.dropped_tokens for e in encoded),
            control=_joined_control(self._prompt_control(sections, encoded, config), keyframe_control),
            keyframes=keyframe_images,
        )

    def _keyframe_control(
        self, keyframes: tuple[tuple[int, np.ndarray], ...], num_sections: int, config: GenerationConfig
    ) -> SectionControl | None:
        """The keyframes' latents (and embeddings, with ``config.keyframe_embeds``) as section anchors."""
        if not keyframes:
            return None
        dtype = self.components.transformer.dtype  # as the start image's embeds, in ``_conditioning``
        return SectionControl(
            anchors=tuple(self._encode_latent(image, config) for _, image in keyframes),
            anchor_embeds=tuple(self._image_embeds(image).to(self.device, dtype) for _, image in keyframes)
            if config.keyframe_embeds
            else (),
            anchor_of=keyframe_coverage([section for section, _ in keyframes], num_sections),
        )

    def _prompt_control(
        self, sections: SectionPrompts, encoded: Sequence[PromptEmbeddings], config: GenerationConfig
    ) -> SectionControl | None:
        """The sections' prompts as a SectionControl, each on the device in the transformer's dtype as the
        base conditioning is; None for one prompt everywhere, which the base conditioning is exactly."""
        if sections.uniform:
            return None
        texts = []
        for embeds in encoded:
            text = self._conditioning(build_conditioning(embeds, None, config.distilled_cfg))
            texts.append(SectionText(text.text_embeds, text.text_mask, text.pooled))
        return SectionControl(texts=tuple(texts), text_of=sections.blends)

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray, config: GenerationConfig) -> torch.Tensor:
        """VAE-encode uint8 frames (T, H, W, 3), T = 4k - 3, as one clip: scaled latents [1, 16, k, H/8, W/8]."""
        with self._phase("image"):
            pixels = torch.from_numpy(frames).to(self.device).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
            return self.components.vae.encode(pixels, tiling=self._tiling(config)).float()

    def _encode_latent(self, image: np.ndarray, config: GenerationConfig) -> torch.Tensor:
        pixels = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1.0
        return self.components.vae.encode(pixels, tiling=self._tiling(config)).float()

    def _image_embeds(self, image: np.ndarray) -> torch.Tensor:
        encoder = self.components.image_encoder
        pixel_values = encoder.preprocess(image).to(self.device, encoder.dtype)
        return encoder(pixel_values)

    def _conditioning(self, conditioning: Conditioning) -> Conditioning:
        return conditioning.to(self.device, self.components.transformer.dtype)

    def _tiling(self, config: GenerationConfig) -> VAETiling | None:
        """The reference's spatial tiles when the config asks, or (None) when the memory plan needs them."""
        tiled = config.vae_tiling
        if tiled is None:
            tiled = self._placement is not None and self._placement.plan.vae_tiling
        return VAETiling() if tiled else None

    # --- generation -------------------------------------------------------------------
    def stream(
        self,
        image: ImageInput | None,
        prompt: str | PromptSchedule,
        config: GenerationConfig | None = None,
        *,
        end_image: ImageInput | None = None,
        negative_prompt: str = "",
        keyframes: Keyframes | None = None,
        callback: Callable[[Progress], None] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        resume: str | os.PathLike[str] | None = None,
    ) -> GenerationRun:
        """Start a generation; iterate the returned run for one ``SectionOutput`` per section.

        prompt           a prompt, or a ``PromptSchedule`` (a string in its form, ``"[0s: …] [2s: …]"``,
                         is parsed: see ``framepack.prompt_schedule``)
        end_image        the video's last frame (inverted mode only): a path, PIL image or uint8 array
        negative_prompt  the negative pass's prompt, used only with real CFG (``config.real_cfg != 1``)
        keyframes        {section index in the video (int) or seconds (float): image} (inverted mode
                         only): each stands in the start-frame context slot of its section and of the
                         sections before it up to the previous keyframe (``framepack.keyframes``)
        run_dir  where the finished sections, previews and resume state are kept: a new or
                 empty folder, or one of a run that finished no section (default: a new
                 temporary folder, see ``GenerationRun.run_dir`` and ``VideoResult.save``)
        resume   a run directory of an interrupted run with the same inputs and settings:
                 continue it (bit-identical to a run never interrupted)
        callback called after every sampler step with a ``Progress``; raise
                 ``framepack.errors.GenerationCancelled`` in it to stop

        A folder is used by one run at a time: from this call until the run ends, another
        run or resume of it raises InputError.

        Under ``use_parallel`` (not ``jobs``) only rank 0 streams (it writes the run); the other
        ranks call ``generate``, which samples in step with it and writes nothing.
        """
        if self._samples_for_rank_0():
            raise ConfigError(
                f"stream: rank {self.parallel.rank} of a parallel run writes nothing; only rank 0 streams, "
                "the other ranks call generate with the same arguments"
            )
        if resume is not None and self.parallel is not None and self.parallel.mode != "jobs":
            # The other ranks refuse it in generate: rank 0 would wait for them in its first collective.
            raise ConfigError("resume: a parallel run cannot be resumed; run the resume in one process")
        config = config or GenerationConfig()
        self._check_parallel_guidance(config)
        check_inputs(
            config,
            end_image=end_image,
            negative_prompt=negative_prompt,
            keyframes=keyframes,
            text_to_video=image is None,
        )
        prompt = as_prompt(prompt)
        section_prompts(prompt, config)  # a schedule that does not fit the video fails before any work
        run_dir, resume = _folder_argument("run_dir", run_dir), _folder_argument("resume", resume)
        if callback is not None and not callable(callback):
            raise InputError(f"callback: expected a function taking a Progress, or None; got {type(callback).__name__}")
        if resume is not None:
            if run_dir is not None and run_dir.resolve() != resume.resolve():
                raise InputError(f"run_dir {run_dir} and resume {resume} name different folders; give one")
            run_dir = resume
        temporary = run_dir is None
        directory = Path(tempfile.mkdtemp(prefix="framepack-run-")) if run_dir is None else run_dir
        lock = claim_run_dir(directory, resume=resume is not None)
        try:
            saved = load_run_state(directory) if resume is not None else None  # a bad state fails here, before any work
            inputs = RunInputs(image, prompt, end_image, negative_prompt, keyframes)
            return GenerationRun(
                self, inputs, config, directory, callback=callback, saved=saved, lock=lock, temporary=temporary
            )
        except BaseException:
            lock.release()
            raise

    def generate(
        self,
        image: ImageInput | None,
        prompt: str | PromptSchedule,
        config: GenerationConfig | None = None,
        *,
        end_image: ImageInput | None = None,
        negative_prompt: str = "",
        keyframes: Keyframes | None = None,
        callback: Callable[[Progress], None] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        resume: str | os.PathLike[str] | None = None,
    ) -> VideoResult:
        """Generate a whole video (arguments as ``stream``).

        Under ``use_parallel`` (not ``jobs``) every rank calls this; ranks other than 0 return None.
        """
        if self._samples_for_rank_0():
            if resume is not None:
                raise ConfigError("resume: a parallel run cannot be resumed; run the resume in one process")
            config = config or GenerationConfig()
            self._check_parallel_guidance(config)
            check_inputs(config, end_image=end_image, negative_prompt=negative_prompt, keyframes=keyframes)
            self._follow(
                image, prompt, config, end_image=end_image, negative_prompt=negative_prompt, keyframes=keyframes
            )
            return None  # type: ignore[return-value]  # only rank 0 has the video
        run = self.stream(
            image,
            prompt,
            config,
            end_image=end_image,
            negative_prompt=negative_prompt,
            keyframes=keyframes,
            callback=callback,
            run_dir=run_dir,
            resume=resume,
        )
        for _ in run:
            pass
        return run.result()

    def stream_extend(
        self,
        source: str | os.PathLike[str],
        seconds: float,
        prompt: str | PromptSchedule,
        config: GenerationConfig | None = None,
        *,
        image: ImageInput | None = None,
        negative_prompt: str = "",
        callback: Callable[[Progress], None] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        resume: str | os.PathLike[str] | None = None,
    ) -> GenerationRun:
        """Start continuing a video by ``seconds`` of forward (F1) sections; iterate the run as ``stream``'s.

        source   a finished run directory (its exact latents, generator and frames continue; it is
                 never changed) or a video file PyAV reads (its last frames are VAE-encoded as history)
        seconds  length to add: a run of S seconds becomes the run of S + seconds (bit for bit the
                 longer run, for a forward run with the same prompt and start image); a video gets
                 ``max(round(seconds·fps / (4·window)), 1)`` sections of 4·window frames
        prompt   a prompt, or a schedule (as ``stream``'s) for a run source only: its times are
                 time in the whole video, the run's and the new part (ConfigError for a video file,
                 whose frames were not made in sections the times could be placed in)
        config   forward-mode settings (``seconds`` is not read); None: the run's own, or the defaults
                 with mode "forward" for a video. A run is continued at its window and fps.
        image    start frame and SigLIP reference (default: the video's first frame; a run's own start latent)
        run_dir, resume, callback, negative_prompt  as ``stream``; ``resume`` continues an interrupted
                 extension, given the same source and arguments
        The result is the whole video: the source's frames as they were (never through the VAE), then the new ones.
        See ``framepack.extension``.
        Not under ``use_parallel`` (except ``jobs``): an extension runs in one process.
        """
        from .extension import start_extension

        if self.parallel is not None and self.parallel.mode != "jobs":
            raise ConfigError(
                f"extend: an extension runs in one process, not under --parallel {self.parallel.mode}; "
                "call use_parallel(None) first"
            )

        return start_extension(
            self, source, seconds, prompt, config, image=image, negative_prompt=negative_prompt,
            callback=callback, run_dir=run_dir, resume=resume,
        )  # fmt: skip

    def extend(
        self,
        source: str | os.PathLike[str],
        seconds: float,
        prompt: str | PromptSchedule,
        config: GenerationConfig | None = None,
        *,
        image: ImageInput | None = None,
        negative_prompt: str = "",
        callback: Callable[[Progress], None] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        resume: str | os.PathLike[str] | None = None,
    ) -> VideoResult:
        """Continue a video to the end (arguments as ``stream_extend``)."""
        run = self.stream_extend(
            source, seconds, prompt, config, image=image, negative_prompt=negative_prompt,
            callback=callback, run_dir=run_dir, resume=resume,
        )  # fmt: skip
        for _ in run:
            pass
        return run.result()

    def fingerprint(
        self,
        inputs: EncodedInputs,
        prompt: str | PromptSchedule,
        config: GenerationConfig,
        *,
        negative_prompt: str = "",
    ) -> dict[str, Any]:
        """What must not change between a run and its resumption: the model, the inputs, the
        sampling settings (the cache described by its class and settings) and how the image is fitted."""
        sampling = config.sampling
        settings = {
            f.name: getattr(sampling, f.name)
            for f in fields(sampling)
            if _LATER_SETTINGS.get(f.name, _NO_DEFAULT) != getattr(sampling, f.name)
        }
        settings.update(cache=describe_policy(sampling.cache), resolution=config.resolution, resize=config.resize)
        return (
            {
                "model": digest(str(sorted(asdict(self.components.transformer.config).items()))),
                "weights": self.components.weights_digest(),  # another checkpoint of the same model differs here
                "dtype": str(self.components.transformer.dtype),
                "vae_tiling": self._tiling(config) is not None,
                "image": _image_digest(inputs.image),
                "end_image": None if inputs.end_image is None else _image_digest(inputs.end_image),
                "prompt": digest(section_prompts(prompt, config).key()),  # a plain prompt: its text, as always
                "negative_prompt": digest(negative_prompt),
                "settings": settings,
                **_keyframe_fingerprint(inputs, config),
            }
            | self._lora_fingerprint()
            | self._compile_fingerprint()
        )

    def settings_record(
        self, inputs: RunInputs, config: GenerationConfig, fingerprint: dict[str, Any], *, video: dict[str, int]
    ) -> dict[str, Any]:
        """What the run of ``inputs`` with ``config`` is made of, to make it again (``framepack.run_settings``)."""
        models = self.sources | {
            "weights_digest": fingerprint["weights"],
            "dtype": fingerprint["dtype"],
            "device": self.device.type,  # the index is the machine's; the type decides the arithmetic
            "compile": self.components.transformer.compiled_blocks is not None,
        }
        loras = [
            {"source": e.source, "digest": e.digest, "strength": e.strength, "fused": e.fused}
            for e in self.components.transformer.loras()
        ]
        return settings_record(config, inputs, models=models, loras=loras, fingerprint=fingerprint, video=video)

    def _compile_fingerprint(self) -> dict[str, Any]:
        """Compiled blocks round differently from eager ones; named only when on, so that runs
        made before compiling existed resume as they did."""
        return {"compile": True} if self.components.transformer.compiled_blocks is not None else {}

    def _lora_fingerprint(self) -> dict[str, Any]:
        """The LoRAs on the transformer (content digest and strength), when there are any:
        runs made before LoRAs existed resume as they did."""
        loras = self.components.transformer.loras()
        return {"loras": [{"digest": e.digest, "strength": e.strength} for e in loras]} if loras else {}


# Settings added after run folders existed, left out of the fingerprint at their default so that
# a run started before them resumes.
_LATER_SETTINGS = {"end_strength": 1.0, "start_strength": 1.0}
_NO_DEFAULT = object()


def _joined_control(prompts: SectionControl | None, keyframes: SectionControl | None) -> SectionControl | None:
    """One SectionControl of a schedule's prompts and the keyframes; None when neither changes a section."""
    if prompts is None or keyframes is None:
        return prompts or keyframes
    return replace(
        prompts, anchors=keyframes.anchors, anchor_embeds=keyframes.anchor_embeds, anchor_of=keyframes.anchor_of
    )


def _keyframe_fingerprint(inputs: EncodedInputs, config: GenerationConfig) -> dict[str, Any]:
    """The keyframes (each fitted image with its section) and whether their embeddings are used,
    when there are any: a run without keyframes fingerprints as runs made before them."""
    if not inputs.keyframes:
        return {}
    return {
        "keyframes": digest(*(f"{section}:{_image_digest(image)}" for section, image in inputs.keyframes)),
        "keyframe_embeds": config.keyframe_embeds,
    }


def _load_target(device: torch.device | str | None, vram_budget_gb: float | None) -> tuple[torch.device, bool]:
    """The device to run on (cuda when available) and whether a memory plan places the weights:
    then they load on the host. On CUDA always: ~40 GiB never fits on a card at once."""
    device = torch.device(device or ("cuda" if runtime().is_available() else "cpu"))
    return device, vram_budget_gb is not None or device.type == "cuda"


def section_prompts(prompt: str | PromptSchedule, config: GenerationConfig) -> SectionPrompts:
    """Each video section's prompt under ``config``'s plan; ConfigError for a schedule that does not fit it."""
    return resolve_prompt(prompt, plan_sections(config.seconds, fps=config.fps, window=config.window, mode=config.mode))


def check_frame_size(size: object) -> None:
    """Raise ConfigError unless ``size`` is (height, width) in pixels, positive multiples of 16
    (the VAE's 8 times the transformer's 2x2 patches)."""
    if (
        not isinstance(size, tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 and v % 16 == 0 for v in size)
    ):
        raise ConfigError(f"size: expected (height, width), positive multiples of 16, got {size!r}")


def check_inputs(
    config: GenerationConfig,
    *,
    end_image: ImageInput | None = None,
    negative_prompt: str = "",
    keyframes: Keyframes | None = None,
    text_to_video: bool = False,
) -> None:
    """Raise ConfigError if the inputs do not go with ``config`` (before any model runs or a run
    folder is claimed); ``text_to_video``: no start image was given (``image=None``)."""
    if end_image is not None and config.mode != "inverted":
        raise ConfigError(f"end_image: only the 'inverted' mode can end on a given frame, got mode {config.mode!r}")
    if keyframes is not None:
        sections = check_keyframes(
            keyframes, plan_sections(config.seconds, fps=config.fps, window=config.window, mode=config.mode)
        )
        if sections and config.keyframe_embeds and text_to_video:
            raise ConfigError(
                "keyframe_embeds: a keyframe's image embeddings replace the start image's, but text-to-video "
                "(image=None) has none; give a start image or set keyframe_embeds=False"
            )
    if not isinstance(negative_prompt, str):
        raise ConfigError(f"negative_prompt: expected a str, got {type(negative_prompt).__name__}")


@dataclass(frozen=True)
class RunInputs:
    """What one run generates from: the arguments of ``stream``, as given."""

    image: ImageInput | None
    prompt: str | PromptSchedule
    end_image: ImageInput | None = None
    negative_prompt: str = ""
    keyframes: Keyframes | None = None


def _folder_argument(name: str, value: object) -> Path | None:
    """``run_dir=`` or ``resume=`` as a Path: a non-empty str or path, or None."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not isinstance(os.fspath(value), str):
        raise InputError(f"{name}: expected a folder path (str or os.PathLike) or None; got {type(value).__name__}")
    if not os.fspath(value):
        raise InputError(f"{name}: expected a folder path, got an empty string")
    return Path(value)


class GenerationRun:
    """One generation in progress: iterate it for the finished sections, then take ``result()``.

    After every section the run directory holds the frames so far (``frames/``) and the state
    needed to resume; at the end it holds ``video.mp4``. ``preview.mp4`` shows the video so far:
    a worker thread re-encodes it after each section while the next one samples, so at any
    moment it is the latest preview that finished (see ``wait_for_preview``). When the run
    ends it shows every finished section, after a cancel or another error too (not after
    KeyboardInterrupt or an iteration given up midway: then it may lag a section or two).

    The run holds its folder's lock until it ends (finished, failed or given up). A temporary
    folder (no ``run_dir`` given) that ends without a finished video is deleted unless a
    section finished: then it is kept, and logged, so that it can be resumed.
    """

    def __init__(
        self,
        pipeline: FramePackPipeline,
        inputs: RunInputs,
        config: GenerationConfig,
        run_dir: Path,
        *,
        callback: Callable[[Progress], None] | None,
        saved: RunState | None,
        lock: RunDirLock,
        temporary: bool,
    ) -> None:
        self.pipeline = pipeline
        self.config = config
        self.run_dir = run_dir
        self.plan = plan_sections(config.seconds, fps=config.fps, window=config.window, mode=config.mode)
        self._inputs = inputs
        self._callback = callback
        self._saved = saved
        self._lock = lock
        self._temporary = temporary
        self._started = False
        self._result: VideoResult | None = None
        self._previews: PreviewWriter | None = None

    def __iter__(self) -> Iterator[SectionOutput]:
        if self._started:
            raise InputError("a run is iterated once; start another with stream() (resume= continues this one)")
        self._started = True
        previews = PreviewWriter(self.run_dir / "preview.mp4", fps=self.config.fps, crf=self.config.crf)
        self._previews = previews
        try:
            yield from self._sections(previews)
        except Exception:
            late = previews.close(finish=True)  # a cancelled or failed run still previews its finished sections
            if late is not None:
                logger.warning("%s", late)
            raise
        finally:
            previews.close()  # no worker outlives the run
            self._lock.release()
            if self._temporary and self._result is None:
                self._drop_or_keep_temporary()

    def _drop_or_keep_temporary(self) -> None:
        """After a temporary run ended unfinished: keep its folder only if it can be resumed."""
        if (self.run_dir / STATE_FILE).exists():
            logger.warning("finished sections are kept in %s: continue with resume=%r", self.run_dir, str(self.run_dir))
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    @property
    def sections_done(self) -> int:
        """Sections a resumed run had already finished (0 for a new run)."""
        return self._saved.sections_done if self._saved is not None else 0

    def wait_for_preview(self) -> Path:
        """While iterating: block until ``preview.mp4`` shows every section yielded so far; return its path.

        Raises the preview encoder's error (an ``OutputError``), if it had one.
        """
        if self._previews is not None:
            return self._previews.wait()
        return self.run_dir / "preview.mp4"

    def _sections(self, previews: PreviewWriter) -> Iterator[SectionOutput]:
        p, config, w, saved = self.pipeline, self.config, self.config.window, self._saved
        frames = FrameAssembler(config.mode, 4 * w - 3, spool_dir=self.run_dir / "frames")
        if saved is not None:  # the files first: a state that disagrees with them fails before any work
            frames.restore(saved.tensors.get("held_frames"), int(saved.tensors["frame_count"]), saved.frame_chunks)
        inputs, fingerprint = self._encoded()
        given = self._inputs
        height, width = inputs.image.shape[:2]
        video = {"height": height, "width": width, "frames": self.plan.pixel_frames, "sections": self._new_sections()}
        settings = p.settings_record(given, config, fingerprint, video=video) | self._record_extras()
        generator = torch.Generator("cpu").manual_seed(config.seed)
        done, history = 0, None
        if saved is not None:
            check_fingerprint(saved.fingerprint, fingerprint, self.run_dir)
            if saved.sections_done > self.plan.num_sections:
                raise InputError(
                    f"cannot resume {self.run_dir}: its state counts {saved.sections_done} finished sections "
                    f"of a video of {self.plan.num_sections}"
                )
            generator.set_state(saved.tensors["generator"])
            history = saved.tensors["history"].to(p.device)
            done = saved.sections_done
            logger.info("resuming %s after %d of %d sections", self.run_dir, done, self.plan.num_sections)
        # Only once the run is known to be this one: a refused resume leaves the folder's settings as they were.
        write_settings_json(self.run_dir, settings)
        started = time.perf_counter()
        sections = inputs.sample(
            p.components.transformer,
            config,
            callback=self._callback,
            generator=generator,
            resume_history=history,
            sections_done=done,
            branches=None if p.parallel is None else p.parallel.branches,
        )
        result: SectionResult | None = None
        for _ in range(
            done, self.plan.num_sections
        ):  # no sampling phase after the last one: it would upload for nothing
            with p._phase("sampling"):  # a tight budget swaps the transformer out for each decode
                result = next(sections)
            with p._phase("decode"):
                # Each temporal chunk goes to the host as it is decoded: the device never holds the
                # whole section's pixels, and they hold no device memory during the next section.
                latents = _latents_to_decode(result, config.mode, w)
                decoded = p.components.vae.decode(latents, tiling=p._tiling(config), out_device="cpu")
            frames.add(decoded)
            previews.submit(frames.frames())  # encoded on the worker while the next section samples
            self._save(fingerprint, result, generator, frames)
            yield SectionOutput(
                index=result.index,
                num_sections=result.num_sections,
                latents=result.latents,
                frames=pixels_to_uint8(decoded[0]),
                video_frames=len(frames),
                preview=previews.path,
                seconds=result.seconds,
                elapsed=time.perf_counter() - started,
                cache_stats=result.cache_stats,
            )
        if result is None:  # every section was already done: the saved run is complete
            latents = history
        else:
            latents = result.history
        # The video supersedes any preview still waiting or being encoded: stop those, then copy it.
        late = previews.close()
        if late is not None:
            raise late
        if len(frames) != settings["video"]["frames"]:  # an extension's plan counts the input as sections
            settings["video"]["frames"] = len(frames)
            write_settings_json(self.run_dir, settings)
        video = frames.write_mp4(
            self.run_dir / "video.mp4", fps=config.fps, crf=config.crf, metadata=mp4_metadata(settings)
        )
        previews.publish(video)
        logger.info("wrote %s (%d frames)", video, len(frames))
        self._result = VideoResult(
            latents, frames, self.run_dir, config.fps, config.crf, temporary=self._temporary, settings=settings
        )

    def _new_sections(self) -> int:
        """The sections this run generates (an extension's plan also counts the input's)."""
        return self.plan.num_sections

    def _record_extras(self) -> dict[str, Any]:
        """Entries of the settings record beyond ``settings_record``'s (an extension names its input)."""
        return {}

    def _encoded(self) -> tuple[EncodedInputs, dict[str, Any]]:
        """The encoded inputs and the fingerprint a resume must match (an extension gives its own)."""
        p, given = self.pipeline, self._inputs
        inputs = p.encode(
            given.image,
            given.prompt,
            self.config,
            end_image=given.end_image,
            negative_prompt=given.negative_prompt,
            keyframes=given.keyframes,
        )
        return inputs, p.fingerprint(inputs, given.prompt, self.config, negative_prompt=given.negative_prompt)

    def result(self) -> VideoResult:
        if self._result is None:
            raise InputError("the run has not finished: iterate it to the end before asking for its result")
        return self._result

    def _save(
        self, fingerprint: dict[str, Any], result: SectionResult, generator: torch.Generator, frames: FrameAssembler
    ) -> None:
        tensors = {
            "history": result.history,
            "generator": generator.get_state(),
            "frame_count": torch.tensor(len(frames)),
        }
        if frames.held is not None:
            tensors["held_frames"] = frames.held
        save_run_state(self.run_dir, RunState(fingerprint, result.index + 1, tensors, frames.chunk_names))


def _image_digest(image: np.ndarray) -> str:
    return digest(torch.from_numpy(np.ascontiguousarray(image)))


def _latents_to_decode(result: SectionResult, mode: str, window: int) -> torch.Tensor:
    """The latents a finished section decodes, as the reference does.

    The first section decodes everything generated so far; a later one decodes its own
    latents plus the ``window`` latents of the neighbouring section, whose pixels the
    overlap blend needs (in front of the video when inverted, at its end when forward).
    """
    if result.index == 0:
        return result.history
    if mode == "inverted":
        return result.history[:, :, : 2 * window + (1 if result.is_last else 0)]
    return result.history[:, :, -2 * window :]
