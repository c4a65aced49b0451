"""FramePackTransformer: FramePack's packed-context HunyuanVideo transformer (hunyuan_video_packed.py).

The work of one call is split in two so that a sampler pays for the step-invariant part
once per section: ``prepare`` embeds the clean history, the image and the text, and builds
RoPE tables and masks; ``denoise`` embeds the noisy latents and the timestep, refines the
text (its gates depend on the timestep) and runs the block stack through an optional
cache policy. ``forward`` is the two in sequence.

Inside the stack the image stream and the context stream live in ONE joint buffer
[B, L_img + L_ctx, D] that every block updates in place: double blocks work on the two
views of it, single blocks on all of it, so nothing is concatenated per block.

float16 weights (GPUs without bfloat16) keep that buffer, the refiner's stream, every
norm, the modulation and the output head in float32: only the matmuls and attention run
in float16, and each block's float16 update is added to the float32 stream in float32.
An overflow that still happens (a float16 matmul output past 65504) raises
``NumericalError`` naming the first block it happened in: in float16 only, the inf/NaN
values are counted on the device after every block and read once per call.
float32 and bfloat16 run entirely in the weights' dtype, as the reference does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..cache.base import CachePolicy, PolicyBranch
from ..conditioning import Conditioning, PackedContext
from ..errors import ConfigError, InputError
from ..precision import FiniteGuard
from . import packing
from .compiled import CompiledBlocks
from .configuration import ModelConfig
from .layers import (
    SINUSOID_DIM,
    MLPEmbedder,
    Modulation,
    Scratch,
    attention,
    layer_norm,
    modulate_,
    pool_rope_table,
    rope_as_complex,
    rope_table,
    timestep_sinusoid,
)
from .linear import Linear
from .loading import KeyRule, PretrainedModel, key_rule
from .lora_methods import LoraMethods
from .transformer_blocks import (
    CleanLatentEmbedder,
    DoubleStreamBlock,
    ImageProjection,
    PatchEmbed,
    SingleStreamBlock,
    TokenRefiner,
)


@dataclasses.dataclass(frozen=True)
class TransformerConfig(ModelConfig):
    """Fields named as in the checkpoint's config.json (diffusers' register_to_config).

    ``fp32_output_head`` is ours, not a checkpoint field: keep ``proj_out`` in float32 and
    return float32, as both reference demos do (high_quality_fp32_output_for_inference).
    """

    in_channels: int = 16
    out_channels: int = 16
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    num_layers: int = 20
    num_single_layers: int = 40
    num_refiner_layers: int = 2
    mlp_ratio: float = 4.0
    patch_size: int = 2
    patch_size_t: int = 1
    qk_norm: str = "rms_norm"
    guidance_embeds: bool = True
    text_embed_dim: int = 4096
    pooled_projection_dim: int = 768
    rope_theta: float = 256.0
    rope_axes_dim: tuple[int, ...] = (16, 56, 56)
    image_condition_type: str | None = None
    has_image_proj: bool = True
    image_proj_dim: int = 1152
    has_clean_x_embedder: bool = True
    fp32_output_head: bool = True

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "framepack": {},
        "medium": dict(
            num_attention_heads=8,
            attention_head_dim=64,
            num_layers=2,
            num_single_layers=4,
            num_refiner_layers=1,
            text_embed_dim=1024,
            pooled_projection_dim=256,
            image_proj_dim=384,
            rope_axes_dim=(16, 24, 24),
        ),
        "tiny": dict(
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=2,
            num_single_layers=2,
            num_refiner_layers=1,
            text_embed_dim=32,
            pooled_projection_dim=16,
            image_proj_dim=24,
            rope_axes_dim=(4, 6, 6),
        ),
    }

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TransformerConfig:
        """A named config: "framepack" (the real 13B model), "medium" (benchmarks) or "tiny" (tests)."""
        if name not in cls.PRESETS:
            raise ConfigError(f"TransformerConfig: unknown preset {name!r}; choose from {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def __post_init__(self) -> None:
        problems = []
        if len(self.rope_axes_dim) != 3 or any(d % 2 for d in self.rope_axes_dim):
            problems.append(f"rope_axes_dim must be 3 even sizes, got {list(self.rope_axes_dim)}")
        if sum(self.rope_axes_dim) != self.attention_head_dim:
            problems.append(
                f"rope_axes_dim {list(self.rope_axes_dim)} must sum to attention_head_dim {self.attention_head_dim}"
            )
        if self.qk_norm != "rms_norm":
            problems.append(f"qk_norm must be 'rms_norm', got {self.qk_norm!r}")
        if self.image_condition_type is not None:
            problems.append(f"image_condition_type must be null (FramePack), got {self.image_condition_type!r}")
        if self.has_clean_x_embedder and (self.patch_size, self.patch_size_t) != (2, 1):
            problems.append("the clean-latent embedders are built for patch_size 2 and patch_size_t 1")
        if self.num_layers + self.num_single_layers < 1:
            problems.append("the model needs at least one double or single block")
        if problems:
            raise ConfigError("TransformerConfig: " + "; ".join(problems))

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_dim(self) -> int:
        return int(self.inner_dim * self.mlp_ratio)


# --- embedders ---------------------------------------------------------------------------


# --- step-invariant inputs and the block stack --------------------------------------------


@dataclasses.dataclass(frozen=True)
class PreparedInputs:
    """Everything a denoising call needs that does not depend on the latents or the timestep."""

    latents_shape: tuple[int, ...]
    clean_tokens: torch.Tensor | None  # [B, L_clean, D]: 4x, 2x, 1x groups in stream order
    rope: torch.Tensor  # complex [Bi, L_img, hd/2] (cos + i sin) for the whole image stream
    image_tokens: torch.Tensor | None  # [B, N, D] projected image embeddings
    text_tokens: torch.Tensor  # [B, n_max, D] proj_in of the text cropped to the longest mask
    refiner_mask: torch.Tensor | None  # [B, 1, 1, n_max] key mask when text lengths differ
    refiner_text_emb: torch.Tensor  # [B, D] the refiner's pooled-text embedding
    guidance_emb: torch.Tensor  # [B, D]
    pooled_emb: torch.Tensor  # [B, D]
    joint_mask: torch.Tensor | None  # [B, 1, 1, L_img + L_ctx] key mask when lengths differ
    noisy_tokens: int  # tokens of the noisy window, the last of the image stream


class SequenceParallel(Protocol):
    """Splits one call's tokens over a group of ranks (framepack.distributed.UlyssesParallel)."""

    def split(self, n_img: int, n_ctx: int, rope: torch.Tensor, mask: torch.Tensor | None, batch: int) -> Any:
        """This rank's share: ``.img_local`` tokens, ``.rope``, ``.key_mask``, ``.local_joint``, ``.gather_image``,
        ``.agree`` (the group's one cache decision)."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of this rank's tokens over every rank's tokens."""


class TransformerStack:
    """One call's block stack as a cache policy sees it (framepack.cache.base.BlockStack).

    Double blocks then single blocks form one list; the context stream rides along in
    the joint buffer and only the image stream is returned.

    Under sequence parallelism (``parallel``) the joint buffer holds only this rank's share of
    the tokens and the blocks attend through ``parallel.attend``; the image stream going in
    and coming out is whole on every rank, so a cache policy decides from the same values
    on every rank, and ``agree`` makes group rank 0's decision the one every rank takes.
    """

    def __init__(
        self,
        model: FramePackTransformer,
        image: torch.Tensor,
        context: torch.Tensor,
        temb: torch.Tensor,
        rope: torch.Tensor,
        mask: torch.Tensor | None,
        guard: FiniteGuard | None = None,
        parallel: SequenceParallel | None = None,
    ) -> None:
        if parallel is not None and model.compiled_blocks is not None:
            raise ConfigError("sequence parallelism runs eager blocks: load the model without compile")
        self._model = model
        self._image = image
        self._context = context
        self._temb_act = F.silu(temb)  # every block's modulation reads silu(temb)
        self._rope = rope
        self._mask = mask
        self._guard = guard  # counts each block's non-finite outputs (float16), at position 1 + block index
        self._joint: torch.Tensor | None = None
        self._next_block = 0
        self._scratch = Scratch()  # the blocks' largest temporaries, one allocation per call
        self._split = (
            None if parallel is None else parallel.split(image.shape[1], context.shape[1], rope, mask, len(image))
        )
        self._attend = attention if parallel is None else parallel.attend

    @property
    def stack_input(self) -> torch.Tensor:
        return self._image

    def agree(self, compute: bool) -> bool:
        return compute if self._split is None else self._split.agree(compute)

    @torch.no_grad()
    def modulated_input(self) -> torch.Tensor:
        # Computed while block 0 is in hand: once its iterator closes, a streamer may reuse its slot.
        for first in self._model._blocks(0, 1):
            return first.modulated_input(self._image, self._temb_act)
        raise AssertionError("the model has at least one block (TransformerConfig checks it)")

    @torch.no_grad()
    def run_first(self) -> torch.Tensor:
        self._joint = self._start_joint()
        # A copy: run_rest updates the joint buffer in place, and the policy subtracts this from its output.
        return self._run(0, 1).clone()

    def run_rest(self) -> torch.Tensor:
        if self._joint is None or self._next_block != 1:
            raise RuntimeError("run_rest() continues after run_first(); call run_first() first")
        return self._run(1, self._model.num_blocks)

    @torch.no_grad()
    def run_all(self) -> torch.Tensor:
        self._joint = self._start_joint()
        return self._run(0, self._model.num_blocks)

    def _start_joint(self) -> torch.Tensor:
        if self._split is None:
            return torch.cat([self._image, self._context], dim=1)
        return self._split.local_joint(self._image, self._context)

    @torch.no_grad()
    def _run(self, start: int, stop: int) -> torch.Tensor:
        split = self._split
        n_img, rope, mask = (
            (self._image.shape[1], self._rope, self._mask)
            if split is None
            else (split.img_local, split.rope, split.key_mask)
        )
        compiled = self._model.compiled_blocks
        for index, block in zip(range(start, stop), self._model._blocks(start, stop)):
            if compiled is None:
                block(self._joint, n_img, self._temb_act, rope, mask, self._scratch, self._attend)  # in place
            else:  # a compiled block returns a new stream
                self._joint = compiled.run(
                    block, self._joint, n_img, self._temb_act, self._rope, self._mask, self._scratch
                )
            if self._guard is not None:
                self._guard.record(1 + index, self._joint)
        self._next_block = stop
        image = self._joint[:, :n_img]
        return image if split is None else split.gather_image(image)


# The streams are float32 under float16 weights, so an inf there came from a float16 matmul.
_FLOAT16_HINT = (
    " (float16 weights: a float16 result inside it passed 65504; run in bfloat16 on a GPU that supports it, "
    "or in float32)"
)


# --- the model -----------------------------------------------------------------------------


def checkpoint_keys(config: TransformerConfig) -> list[KeyRule]:
    """Our module paths -> the checkpoint's (diffusers' HunyuanVideoFramepackTransformer3DModel).

    Several checkpoint paths are fused into one tensor, concatenated along dim 0 in order.
    Tensors no rule covers (``image_projection``, ``proj_out``) have the checkpoint's name.
    """
    dim, mlp = config.inner_dim, config.mlp_dim
    refiner = "context_embedder.token_refiner.refiner_blocks.*."
    double, single = "transformer_blocks.*.", "single_transformer_blocks.*."
    return [
        key_rule("patch_embed", "x_embedder"),
        key_rule("clean_embed", "clean_x_embedder"),
        key_rule("timestep_embed", "time_text_embed.timestep_embedder"),
        key_rule("guidance_embed", "time_text_embed.guidance_embedder"),
        key_rule("pooled_text_embed", "time_text_embed.text_embedder"),
        key_rule("text_refiner.timestep_embed", "context_embedder.time_text_embed.timestep_embedder"),
        key_rule("text_refiner.pooled_text_embed", "context_embedder.time_text_embed.text_embedder"),
        key_rule("text_refiner.proj_in", "context_embedder.proj_in"),
        key_rule("text_refiner.blocks.*.attn_norm", refiner + "norm1"),
        key_rule("text_refiner.blocks.*.qkv", refiner + "attn.to_q", refiner + "attn.to_k", refiner + "attn.to_v"),
        key_rule("text_refiner.blocks.*.attn_out", refiner + "attn.to_out.0"),
        key_rule("text_refiner.blocks.*.mlp_norm", refiner + "norm2"),
        key_rule("text_refiner.blocks.*.mlp.fc_in", refiner + "ff.net.0.proj"),
        key_rule("text_refiner.blocks.*.mlp.fc_out", refiner + "ff.net.2"),
        key_rule("text_refiner.blocks.*.gates", refiner + "norm_out.linear"),
        key_rule("double_blocks.*.modulation", double + "norm1.linear", double + "norm1_context.linear"),
        key_rule("double_blocks.*.image_qkv", double + "attn.to_q", double + "attn.to_k", double + "attn.to_v"),
        key_rule(
            "double_blocks.*.context_qkv",
            double + "attn.add_q_proj",
            double + "attn.add_k_proj",
            double + "attn.add_v_proj",
        ),
        key_rule("double_blocks.*.image_qk_norm", double + "attn.norm_q.weight", double + "attn.norm_k.weight"),
        key_rule(
            "double_blocks.*.context_qk_norm", double + "attn.norm_added_q.weight", double + "attn.norm_added_k.weight"
        ),
        key_rule("double_blocks.*.image_attn_out", double + "attn.to_out.0"),
        key_rule("double_blocks.*.context_attn_out", double + "attn.to_add_out"),
        key_rule("double_blocks.*.image_mlp.fc_in", double + "ff.net.0.proj"),
        key_rule("double_blocks.*.image_mlp.fc_out", double + "ff.net.2"),
        key_rule("double_blocks.*.context_mlp.fc_in", double + "ff_context.net.0.proj"),
        key_rule("double_blocks.*.context_mlp.fc_out", double + "ff_context.net.2"),
        key_rule("single_blocks.*.modulation", single + "norm.linear"),
        key_rule(
            "single_blocks.*.qkv_mlp",
            single + "attn.to_q",
            single + "attn.to_k",
            single + "attn.to_v",
            single + "proj_mlp",
            sizes=(dim, dim, dim, mlp),
        ),
        key_rule("single_blocks.*.qk_norm", single + "attn.norm_q.weight", single + "attn.norm_k.weight"),
        key_rule("single_blocks.*.proj_out", single + "proj_out"),
        key_rule("output_modulation", "norm_out.linear"),
    ]


class FramePackTransformer(LoraMethods, PretrainedModel):
    """The packed HunyuanVideo transformer; predicts the flow-matching velocity.

    ``enable_streaming(device, budget_bytes)`` (framepack.models.streaming) streams the
    double and single blocks through one ``LayerStreamer``: one budget, slots shared by
    both kinds, and prefetching crosses from the last double block to the first single one.
    ``add_lora``, ``set_lora_strength``, ``remove_lora``, ``fuse_loras`` and ``loras``
    (framepack.models.lora_methods) apply LoRA files at run time. ``compile`` runs the
    blocks through ``torch.compile`` (framepack.models.compiled).
    """

    config_class = TransformerConfig
    weights_name = "diffusion_pytorch_model"
    checkpoint_class_name = "HunyuanVideoFramepackTransformer3DModel"
    compiled_blocks: CompiledBlocks | None = None  # set by ``compile``
    sequence_parallel: SequenceParallel | None = None  # set by framepack.distributed.sequence_parallel

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        dim, heads, head_dim = config.inner_dim, config.num_attention_heads, config.attention_head_dim
        patch = (config.patch_size_t, config.patch_size, config.patch_size)
        self.patch_embed = PatchEmbed(config.in_channels, dim, patch)
        self.clean_embed = CleanLatentEmbedder(config.in_channels, dim) if config.has_clean_x_embedder else None
        self.image_projection = ImageProjection(config.image_proj_dim, dim) if config.has_image_proj else None
        self.timestep_embed = MLPEmbedder(SINUSOID_DIM, dim)
        self.guidance_embed = MLPEmbedder(SINUSOID_DIM, dim)
        self.pooled_text_embed = MLPEmbedder(config.pooled_projection_dim, dim)
        self.text_refiner = TokenRefiner(config.text_embed_dim, dim, heads, config.num_refiner_layers, config.mlp_ratio)
        self.double_blocks = nn.ModuleList(
            [DoubleStreamBlock(dim, heads, head_dim, config.mlp_dim) for _ in range(config.num_layers)]
        )
        self.single_blocks = nn.ModuleList(
            [SingleStreamBlock(dim, heads, head_dim, config.mlp_dim) for _ in range(config.num_single_layers)]
        )
        self.output_modulation = Modulation(dim, 2)  # scale and shift of the output norm
        self.proj_out = Linear(dim, config.patch_size_t * config.patch_size**2 * config.out_channels)

    # --- loading ----------------------------------------------------------------------------
    def checkpoint_keys(self) -> list[KeyRule]:
        return checkpoint_keys(self.config)

    def keep_float32(self, name: str) -> bool:
        return self.config.fp32_output_head and name.startswith("proj_out.")

    def fp8_quantizable(self, name: str) -> bool:
        """The Linear weights of the double and single blocks, modulation aside (as musubi's
        ``--fp8_scaled`` chooses: embedders, refiner, norms and the output head stay)."""
        module_name, _, attr = name.rpartition(".")
        if attr != "weight" or not module_name.startswith(("double_blocks.", "single_blocks.")):
            return False
        module = self.get_submodule(module_name)
        return isinstance(module, Linear) and not isinstance(module, Modulation)

    def _lora_block_counts(self) -> tuple[int, int]:
        return self.config.num_layers, self.config.num_single_layers

    # --- properties -------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embed.proj.weight.device

    @property
    def residual_dtype(self) -> torch.dtype:
        """dtype of the streams between blocks: float32 under float16 weights (range), else the weights'."""
        return torch.float32 if self.dtype == torch.float16 else self.dtype

    @property
    def num_blocks(self) -> int:
        return len(self.double_blocks) + len(self.single_blocks)

    def streamable_blocks(self) -> list[nn.Module]:
        return [*self.double_blocks, *self.single_blocks]

    def block_name(self, index: int) -> str:
        """Name of block ``index`` of the stack, e.g. ``single_blocks.3``."""
        n_double = len(self.double_blocks)
        return f"double_blocks.{index}" if index < n_double else f"single_blocks.{index - n_double}"

    def _blocks(self, start: int, stop: int) -> Iterator[nn.Module]:
        """Blocks ``start..stop-1`` of the stack (double then single); the one place blocks are fetched."""
        if self.streamer is not None:
            return self.streamer.iterate(start, stop)
        return self._resident_blocks(start, stop)

    def _resident_blocks(self, start: int, stop: int) -> Iterator[nn.Module]:
        n_double = len(self.double_blocks)
        for index in range(start, stop):
            yield self.double_blocks[index] if index < n_double else self.single_blocks[index - n_double]

    # --- compiling ----------------------------------------------------------------------------
    def compile(  # type: ignore[override]  # nn.Module.compile compiles forward whole; ours compiles per block kind
        self, mode: str = "default", *, backend: str | Any = "inductor", dynamic: bool = True
    ) -> CompiledBlocks:
        """Run the double and single blocks through ``torch.compile``: one graph per block kind,
        shared by every block and a streamer's shells (framepack.models.compiled). Compiles on
        the first call, not here. Returns the ``CompiledBlocks`` (its ``graphs`` count the
        compilations, its ``fallback`` says why it runs eager if it does)."""
        self.compiled_blocks = CompiledBlocks(mode, backend=backend, dynamic=dynamic)
        return self.compiled_blocks

    # --- the API ------------------------------------------------------------------------------
    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        conditioning: Conditioning,
        context: PackedContext | None = None,
        *,
        cache: CachePolicy | PolicyBranch | None = None,
    ) -> torch.Tensor:
        """Velocity [B, C, T, H, W] for noisy ``latents`` at ``timestep`` [B] (1000 x sigma).

        ``cache`` runs the block stack (``cache.run(stack)``); None runs every block.
        """
        _expect_latents(latents, self.config)
        prepared = self.prepare(conditioning, context, tuple(latents.shape))
        return self.denoise(latents, timestep, prepared, cache=cache)

    @torch.no_grad()
    def prepare(
        self, conditioning: Conditioning, context: PackedContext | None, latents_shape: tuple[int, ...] | torch.Size
    ) -> PreparedInputs:
        """The step-invariant part of a call: run once per section, reuse for every step."""
        config, dtype, device = self.config, self.dtype, self.device
        self.lora_strengths.place(device)  # run-time LoRAs' factors, where the blocks compute
        latents_shape = tuple(int(s) for s in latents_shape)
        batch, _, frames, height, width = _check_shape(latents_shape, config)
        _check_conditioning(conditioning, batch, config, has_image_proj=self.image_projection is not None)
        if context is None:
            context = PackedContext(latent_indices=torch.arange(frames, device=device)[None])
        else:
            context.check_against(torch.empty(latents_shape, device="meta"))
        grid = (height // config.patch_size, width // config.patch_size)

        rope = rope_table(context.latent_indices.to(device), *grid, config.rope_axes_dim, config.rope_theta)
        ropes, tokens = [rope.flatten(2, 4)], []
        for name, latents, indices in context.groups:  # 1x, 2x, 4x: each is prepended
            if self.clean_embed is None:
                raise InputError(
                    f"PackedContext.{name}: this model has no clean-latent embedder (has_clean_x_embedder=false)"
                )
            tokens.insert(0, self.clean_embed(name, latents.to(device=device, dtype=dtype)))
            table = rope_table(indices.to(device), *grid, config.rope_axes_dim, config.rope_theta)
            if name != "clean":
                cell = CleanLatentEmbedder.KERNELS[name][0]
                table = pool_rope_table(table, (cell, cell, cell))
            ropes.insert(0, table.flatten(2, 4))
        rows = max(r.shape[0] for r in ropes)
        rope = rope_as_complex(torch.cat([r.expand(rows, *r.shape[1:]) for r in ropes], dim=2))

        # Lengths shape the inputs, so they are read on the host, where the mask lives.
        lengths = conditioning.text_mask.cpu().sum(dim=1)
        n_text = max(int(lengths.max()), 1)
        uneven = bool((lengths != lengths[0]).any())
        text_mask = conditioning.text_mask.to(device)
        text = conditioning.text_embeds.to(device=device, dtype=dtype)
        weights = text_mask.float()[..., None]
        mean = ((text.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)).to(dtype)
        refiner = self.text_refiner
        refiner_mask = None
        if uneven:
            refiner_mask = text_mask[:, :n_text].clone()
            refiner_mask[:, 0] = True  # as the reference: every query row keeps one key
            refiner_mask = refiner_mask[:, None, None]

        image_tokens = None
        if conditioning.image_embeds is not None:
            image_tokens = self.image_projection(conditioning.image_embeds.to(device=device, dtype=dtype))
        clean_tokens = torch.cat(tokens, dim=1) if tokens else None
        joint_mask = None
        if uneven:
            n_img = rope.shape[1]
            n_image = 0 if image_tokens is None else image_tokens.shape[1]
            positions = torch.arange(n_img + n_image + n_text, device=device)
            joint_mask = (positions[None] < (n_img + n_image + lengths.to(device))[:, None])[:, None, None]

        guidance = (1000 * conditioning.guidance.to(device)).to(dtype)  # the reference rounds it to the model dtype
        return PreparedInputs(
            latents_shape=latents_shape,
            clean_tokens=clean_tokens,
            rope=rope,
            image_tokens=image_tokens,
            text_tokens=refiner.proj_in(text[:, :n_text]),
            refiner_mask=refiner_mask,
            refiner_text_emb=refiner.pooled_text_embed(mean),
            guidance_emb=self.guidance_embed(timestep_sinusoid(guidance).to(dtype)),
            pooled_emb=self.pooled_text_embed(conditioning.pooled.to(device=device, dtype=dtype)),
            joint_mask=joint_mask,
            noisy_tokens=packing.noisy_tokens(
                frames, height, width, patch_size=config.patch_size, patch_size_t=config.patch_size_t
            ),
        )

    @torch.no_grad()
    def denoise(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        prepared: PreparedInputs,
        *,
        cache: CachePolicy | PolicyBranch | None = None,
    ) -> torch.Tensor:
        """One denoising call on prepared inputs: velocity [B, C, T, H, W]."""
        _expect_latents(latents, self.config)
        if tuple(latents.shape) != prepared.latents_shape:
            raise InputError(
                f"latents: expected shape {list(prepared.latents_shape)} (the shape given to prepare), "
                f"got {list(latents.shape)}"
            )
        batch = latents.shape[0]
        timestep = _expect_timestep(timestep, batch).to(device=self.device, dtype=self.dtype)
        dtype = self.dtype

        stream = self.residual_dtype
        noisy = self.patch_embed(latents.to(device=self.device, dtype=dtype))
        image = noisy if prepared.clean_tokens is None else torch.cat([prepared.clean_tokens, noisy], dim=1)
        image = image.to(stream)
        t_freq = timestep_sinusoid(timestep).to(dtype)
        temb = self.timestep_embed(t_freq) + prepared.guidance_emb + prepared.pooled_emb
        refiner = self.text_refiner
        text_temb = refiner.timestep_embed(t_freq) + prepared.refiner_text_emb
        text = refiner(prepared.text_tokens.to(stream), text_temb, prepared.refiner_mask)
        guard = None
        if dtype == torch.float16:  # reading a verdict syncs the device: once per call, float16 only
            names = ["text_refiner output"]
            names += [f"{self.block_name(index)} output" for index in range(self.num_blocks)]
            guard = FiniteGuard([name + _FLOAT16_HINT for name in names], self.device)
            guard.record(0, text)
        context = text if prepared.image_tokens is None else torch.cat([prepared.image_tokens.to(stream), text], dim=1)

        stack = TransformerStack(
            self, image, context, temb, prepared.rope, prepared.joint_mask, guard, self.sequence_parallel
        )
        if cache is None:
            image = stack.run_all()
        else:
            image = cache.run(stack)
            _check_policy_output(cache, image, stack.stack_input)
        if guard is not None:
            guard.raise_if_nonfinite()
        return self._output_head(image[:, -prepared.noisy_tokens :], temb, prepared.latents_shape)

    def _output_head(self, tokens: torch.Tensor, temb: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        # scale first (AdaLayerNormContinuous); float32 under float16 weights, like the stream
        scale, shift = self.output_modulation(F.silu(temb)).to(tokens.dtype).unbind(1)
        tokens = modulate_(layer_norm(tokens), 1 + scale, shift)
        tokens = self.proj_out(tokens.to(self.proj_out.compute_dtype))
        batch, _, frames, height, width = shape
        p, pt = self.config.patch_size, self.config.patch_size_t
        out = tokens.reshape(batch, frames // pt, height // p, width // p, -1, pt, p, p)
        return out.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(batch, -1, frames, height, width)


# --- input checks ------------------------------------------------------------------------------


def _check_shape(shape: tuple[int, ...], config: TransformerConfig) -> tuple[int, ...]:
    if len(shape) != 5:
        raise InputError(f"latents: expected shape [B, {config.in_channels}, T, H, W], got {list(shape)}")
    _, channels, frames, height, width = shape
    if channels != config.in_channels:
        raise InputError(f"latents: expected {config.in_channels} channels, got shape {list(shape)}")
    p, pt = config.patch_size, config.patch_size_t
    if height % p or width % p or frames % pt or min(shape) < 1:
        raise InputError(
            f"latents: T must be a multiple of {pt} and H, W multiples of {p} (non-empty), got shape {list(shape)}"
        )
    return shape


def _expect_latents(latents: object, config: TransformerConfig) -> None:
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        got = latents.dtype if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise InputError(f"latents: expected a floating-point tensor [B, C, T, H, W], got {got}")
    _check_shape(tuple(latents.shape), config)


def _expect_timestep(timestep: object, batch: int) -> torch.Tensor:
    if not isinstance(timestep, torch.Tensor):
        raise InputError(f"timestep: expected a tensor [{batch}] (1000 x sigma), got {type(timestep).__name__}")
    if timestep.ndim == 0 or tuple(timestep.shape) == (1,):
        return timestep.reshape(1).expand(batch)
    if tuple(timestep.shape) != (batch,):
        raise InputError(f"timestep: expected shape [{batch}] (one per sample), got {list(timestep.shape)}")
    return timestep


def _check_policy_output(cache: CachePolicy | PolicyBranch, output: object, stack_input: torch.Tensor) -> None:
    policy = cache.policy if isinstance(cache, PolicyBranch) else cache
    # The output head keeps the last tokens: a policy returning more or fewer would give a wrong video, silently.
    if not isinstance(output, torch.Tensor) or output.shape != stack_input.shape:
        got = f"shape {list(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
        raise InputError(
            f"cache policy {type(policy).__name__}.run: expected the image stream of shape "
            f"{list(stack_input.shape)} (the block stack's input), got {got}"
        )


def _check_conditioning(cond: Conditioning, batch: int, config: TransformerConfig, *, has_image_proj: bool) -> None:
    if not isinstance(cond, Conditioning):
        raise InputError(f"conditioning: expected a Conditioning, got {type(cond).__name__}")
    if cond.batch_size != batch:
        raise InputError(f"conditioning: expected batch {batch} to match the latents, got {cond.batch_size}")
    if cond.text_embeds.shape[-1] != config.text_embed_dim:
        raise InputError(
            f"text_embeds: expected {config.text_embed_dim} features, got shape {list(cond.text_embeds.shape)}"
        )
    if cond.pooled.shape[-1] != config.pooled_projection_dim:
        raise InputError(
            f"pooled: expected {config.pooled_projection_dim} features, got shape {list(cond.pooled.shape)}"
        )
    if cond.image_embeds is not None:
        if not has_image_proj:
            raise InputError("image_embeds: this model has no image projection (has_image_proj=false); pass None")
        if cond.image_embeds.shape[-1] != config.image_proj_dim:
            raise InputError(
                f"image_embeds: expected {config.image_proj_dim} features, got shape {list(cond.image_embeds.shape)}"
            )
