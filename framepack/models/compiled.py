"""Compiled blocks: ``torch.compile`` of the double- and single-stream block forwards.

One graph per block *kind*, not per block. The compiled functions below take the block
as an argument; dynamo inlines ``nn.Module`` calls and lifts a module's parameters and
buffers to graph inputs, so every block of a kind (and a streamer's shells, whose
tensors point into its slots) runs the same graph on its own weights. What a graph
guards on, and so what compiles again:

* the blocks' structure and dtypes: fp8 storage, another dtype or device, run-time LoRAs
  added or removed, and blocks whose LoRA pairs differ (a LoRA on some blocks only, or of
  another rank there), each such set once, up to dynamo's recompile limit (8 per kind),
  past which dynamo runs those blocks eager. Not a LoRA's strength nor its alpha / rank:
  the strengths are 0-dim tensors the graph reads (``LoraStrengths.tensor``), updated in
  place by ``set_lora_strength``, and alpha / rank is folded into each pair's up matrix;
* a batch size change (once: the batch dimension then becomes dynamic too), a text mask
  appearing or going (prompts of different lengths in one batch);
* not the token counts: those of the joint stream and of its image part are marked
  dynamic, so a new resolution, window, packed context or text length reuses the graph.
  A whole run compiles each kind once, whatever its sections (``CompiledBlocks.graphs``
  counts the graphs compiled).

The functions compute what ``DoubleStreamBlock.forward`` and ``SingleStreamBlock.forward``
compute, out of place (inductor plans the buffers and fuses the norms, modulation, RoPE
and GELU around the matmuls; the eager blocks do that by hand with a scratch buffer and
in-place updates). float16 weights keep the eager blocks' float32 islands: the stream,
norms, modulation and residual adds are float32, the matmuls and attention float16.

Where compilation is unavailable (no C++ compiler for CPU inductor, no Triton for a GPU,
a backend that fails) the blocks run eager after one warning saying ``falling back to
eager`` and why.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .layers import GELU_SIGMOID_SCALE, NORM_EPS, Scratch, attention, layer_norm
from .linear import Linear
from .transformer_blocks import DoubleStreamBlock, SingleStreamBlock

Backend = Callable[..., Any]  # a torch.compile backend: (GraphModule, example inputs) -> callable
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# --- the block forwards, as compiled ------------------------------------------------------


def _linear(layer: Linear, x: torch.Tensor) -> torch.Tensor:
    return layer(x.to(layer.compute_dtype))


def _modulate(normed: torch.Tensor, scale_plus_one: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return normed * scale_plus_one[:, None] + shift[:, None]


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """As ``layers.gelu_tanh_``: x * sigmoid(2u) on a CPU in float32, the same function as
    0.5 x (1 + tanh u): inductor's CPU tanh kernel took about twice as long on a medium step's
    [3017, 2048] MLP activation."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return x * torch.sigmoid(GELU_SIGMOID_SCALE * (x + 0.044715 * x * x * x))
    return F.gelu(x, approximate="tanh")


def _qk_norm_rope(
    qk: torch.Tensor, n_img: int, weight_img: torch.Tensor, weight_ctx: torch.Tensor, rope: torch.Tensor
) -> torch.Tensor:
    """``layers.qk_norm_rope_`` out of place: RMSNorm of q|k [B, L, 2, H, hd], RoPE on the image tokens.

    ``rope`` is the real view [Bi, L_img, hd/2, 2] (cos, sin) of the complex table: inductor
    generates no code for complex operators."""
    norm = torch.linalg.vector_norm(qk, dim=-1, keepdim=True, dtype=torch.float32)
    inv = torch.rsqrt(norm * norm / qk.shape[-1] + NORM_EPS)
    qk = (qk * inv).to(qk.dtype)
    image = qk[:, :n_img] * weight_img.to(qk.dtype)
    context = qk[:, n_img:] * weight_ctx.to(qk.dtype)
    # interleaved pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), in float32
    x0, x1 = image.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = rope[:, :, None, None].unbind(-1)
    rotated = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2)
    return torch.cat([rotated.to(qk.dtype), context], dim=1)


def _mlp(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    return _linear(mlp.fc_out, _gelu_tanh(_linear(mlp.fc_in, x)))


def double_block(
    block: DoubleStreamBlock, joint: torch.Tensor, temb_act: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``DoubleStreamBlock.forward`` out of place; the image stream is the first ``rope.shape[1]`` tokens."""
    n_img = rope.shape[1]
    mod = block.modulation(temb_act).to(joint.dtype)
    shift, scale, gate, shift2, scale2, gate2 = mod[:, :6].unbind(1)
    c_shift, c_scale, c_gate, c_shift2, c_scale2, c_gate2 = mod[:, 6:].unbind(1)
    x, c = joint[:, :n_img], joint[:, n_img:]

    normed = layer_norm(joint)
    qkv = torch.cat(
        [
            _linear(block.image_qkv, _modulate(normed[:, :n_img], 1 + scale, shift)),
            _linear(block.context_qkv, _modulate(normed[:, n_img:], 1 + c_scale, c_shift)),
        ],
        dim=1,
    ).unflatten(-1, (3, block.heads, -1))
    image_weights, context_weights = block.image_qk_norm.view(2, 1, -1), block.context_qk_norm.view(2, 1, -1)
    qk = _qk_norm_rope(qkv[:, :, :2], n_img, image_weights, context_weights, rope)
    attn_out = attention(qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2], mask)
    x = x + _linear(block.image_attn_out, attn_out[:, :n_img]).to(x.dtype) * gate[:, None]
    c = c + _linear(block.context_attn_out, attn_out[:, n_img:]).to(c.dtype) * c_gate[:, None]

    x = x + _mlp(block.image_mlp, _modulate(layer_norm(x), 1 + scale2, shift2)).to(x.dtype) * gate2[:, None]
    c = c + _mlp(block.context_mlp, _modulate(layer_norm(c), 1 + c_scale2, c_shift2)).to(c.dtype) * c_gate2[:, None]
    return torch.cat([x, c], dim=1)


def single_block(
    block: SingleStreamBlock, joint: torch.Tensor, temb_act: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``SingleStreamBlock.forward`` out of place; the image stream is the first ``rope.shape[1]`` tokens."""
    n_img, dim = rope.shape[1], block.dim
    shift, scale, gate = block.modulation(temb_act).to(joint.dtype).unbind(1)
    h = _linear(block.qkv_mlp, _modulate(layer_norm(joint), 1 + scale, shift))
    qkv = h[..., : 3 * dim].unflatten(-1, (3, block.heads, -1))
    weights = block.qk_norm.view(2, 1, -1)
    qk = _qk_norm_rope(qkv[:, :, :2], n_img, weights, weights, rope)
    attn = attention(qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2], mask)
    out = _linear(block.proj_out, torch.cat([attn, _gelu_tanh(h[..., 3 * dim :])], dim=-1))
    return joint + out.to(joint.dtype) * gate[:, None]


# --- compiling and running them ---------------------------------------------------------

_FORWARDS: dict[type, tuple[str, Callable[..., torch.Tensor]]] = {
    DoubleStreamBlock: ("double", double_block),
    SingleStreamBlock: ("single", single_block),
}


class CompiledBlocks:
    """Runs a transformer's blocks through one compiled graph per block kind (the module docstring).

    ``mode`` is ``torch.compile``'s for inductor; ``backend`` another ``torch.compile``
    backend (a name or a callable); ``dynamic=False`` compiles for the first shapes only
    (a new shape compiles again, up to dynamo's recompile limit, then runs eager).
    ``graphs`` counts the graphs compiled, per kind: {"double": 1, "single": 1} after any
    number of sections when nothing else changes. ``fallback`` says why the blocks run
    eager, or is None.
    """

    def __init__(self, mode: str = "default", *, backend: str | Backend = "inductor", dynamic: bool = True) -> None:
        if mode not in MODES:
            raise ConfigError(f"compile: mode must be one of {list(MODES)}, got {mode!r}")
        if backend != "inductor" and mode != "default":
            raise ConfigError(f"compile: mode {mode!r} is inductor's; got backend {backend!r}")
        self.mode = mode
        self.backend = backend
        self.dynamic = dynamic
        self.graphs: Counter[str] = Counter()
        self.fallback: str | None = None
        self._checked: set[str] = set()  # device types whose compiler was found
        self._compiled = {
            kind: (
                name,
                torch.compile(
                    forward, backend=self._counting(name), fullgraph=True, dynamic=None if dynamic else False
                ),
            )
            for kind, (name, forward) in _FORWARDS.items()
        }

    def _counting(self, name: str) -> Backend:
        def backend(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
            self.graphs[name] += 1
            if self.backend != "inductor":
                return _lookup_backend(self.backend)(graph, example_inputs)
            from torch._inductor import list_mode_options
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(graph, example_inputs, config_patches=list_mode_options(self.mode))

        return backend

    def run(
        self,
        block: torch.nn.Module,
        joint: torch.Tensor,
        n_img: int,
        temb_act: torch.Tensor,
        rope: torch.Tensor,
        mask: torch.Tensor | None,
        scratch: Scratch,
    ) -> torch.Tensor:
        """``block(joint, ...)``, compiled where possible; returns the updated joint stream
        (a new tensor when compiled, ``joint`` updated in place when eager)."""
        compiled = self._compiled.get(type(block))
        if compiled is not None and self.fallback is None:
            self._check_compiler(joint.device)
        if compiled is None or self.fallback is not None:
            return block(joint, n_img, temb_act, rope, mask, scratch)
        rope_real = torch.view_as_real(rope)
        if self.dynamic:  # token counts are sizes, not constants, in the graph
            torch._dynamo.maybe_mark_dynamic(joint, 1)
            torch._dynamo.maybe_mark_dynamic(rope_real, 1)
            if mask is not None:
                torch._dynamo.maybe_mark_dynamic(mask, 3)
        try:
            return compiled[1](block, joint, temb_act, rope_real, mask)
        except torch._dynamo.exc.TorchDynamoException as error:  # raised before the graph runs: joint is intact
            cause = getattr(error, "inner_exception", None) or error  # the backend's own error
            first_line = (str(cause).strip().splitlines() or [""])[0]  # dynamo appends pages of traceback
            self._fall_back(f"compiling the {compiled[0]}-stream block failed: {type(cause).__name__}: {first_line}")
        return block(joint, n_img, temb_act, rope, mask, scratch)

    def _check_compiler(self, device: torch.device) -> None:
        if self.backend != "inductor" or device.type in self._checked:
            return
        reason = _inductor_unavailable(device)
        if reason is not None:
            self._fall_back(reason)
        self._checked.add(device.type)

    def _fall_back(self, reason: str) -> None:
        self.fallback = reason
        warnings.warn(f"torch.compile unavailable, falling back to eager: {reason}", RuntimeWarning, stacklevel=3)


def _lookup_backend(backend: str | Backend) -> Backend:
    from torch._dynamo import lookup_backend

    return lookup_backend(backend) if isinstance(backend, str) else backend


def _inductor_unavailable(device: torch.device) -> str | None:
    """Why inductor cannot compile for ``device``, or None: what it needs is looked up as it would."""
    if device.type == "cpu":
        from torch._inductor import config
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception as error:  # InvalidCxxCompiler, or a search that failed otherwise
            return f"inductor needs a C++ compiler for the CPU and found none of {config.cpp.cxx!r} ({error})"
        return None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "inductor needs Triton for CUDA and it is not installed"
    return None
