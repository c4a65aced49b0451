"""The HunyuanVideo VAE in ComfyUI's LDM names, read as the diffusers checkpoint keys.

Comfy-Org's repackaged ``hunyuan_video_vae_bf16.safetensors`` names the VAE as ComfyUI's
LDM ``Encoder``/``Decoder`` do; Kijai's file of the same name uses the diffusers names our
``HunyuanVideoVAE.checkpoint_keys`` start from. The two layouts hold the same tensors:

====================================================  ============================================
LDM                                                   diffusers
====================================================  ============================================
``encoder.down.i.block.j``                            ``encoder.down_blocks.i.resnets.j``
``encoder.down.i.downsample``                         ``encoder.down_blocks.i.downsamplers.0``
``decoder.up.i.block.j``                              ``decoder.up_blocks.{n-1-i}.resnets.j`` (n levels)
``decoder.up.i.upsample``                             ``decoder.up_blocks.{n-1-i}.upsamplers.0``
``*.mid.block_k``                                     ``*.mid_block.resnets.{k-1}``
``*.mid.attn_1.{q,k,v,proj_out,norm}``                ``*.mid_block.attentions.0.{to_q,to_k,to_v,to_out.0,group_norm}``
``*.norm_out``                                        ``*.conv_norm_out``
``*.nin_shortcut``                                    ``*.conv_shortcut``
====================================================  ============================================

The LDM decoder lists its levels from the highest resolution up (it runs ``up.{n-1}``
first); diffusers lists them in running order. The attention projections are 1×1×1
``Conv3d`` weights [C, C, 1, 1, 1] there and ``Linear`` weights [C, C] here: the same
numbers, reshaped. Both layouts keep the causal convolutions' inner ``.conv`` level
(``conv_in.conv.weight``) and name ``quant_conv``/``post_quant_conv`` alike.
"""

from __future__ import annotations

import re

from ..errors import CheckpointError

DIFFUSERS_MARKER = "decoder.conv_norm_out.weight"
LDM_MARKER = "decoder.norm_out.weight"
CAUSAL_CONV_MARKER = "decoder.conv_in.conv.weight"  # a 3D causal VAE; an image VAE has decoder.conv_in.weight

_ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0", "norm": "group_norm"}
_PROJECTION_WEIGHT = re.compile(r"\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def vae_layout(keys: set[str]) -> str:
    """``"diffusers"`` or ``"ldm"``: which names a HunyuanVideo VAE file uses."""
    if DIFFUSERS_MARKER in keys:
        return "diffusers"
    if LDM_MARKER in keys:
        if CAUSAL_CONV_MARKER not in keys:
            raise CheckpointError(
                f"an image VAE in LDM names (has {LDM_MARKER!r} but no {CAUSAL_CONV_MARKER!r}), "
                "not HunyuanVideo's causal 3D VAE"
            )
        return "ldm"
    raise CheckpointError(
        f"not a HunyuanVideo VAE: expected {DIFFUSERS_MARKER!r} (diffusers names) or {LDM_MARKER!r} with "
        f"{CAUSAL_CONV_MARKER!r} (ComfyUI's LDM names)"
    )


def ldm_to_diffusers(key: str, shape: tuple[int, ...], levels: int) -> tuple[str, tuple[int, ...]]:
    """The diffusers key (and shape) of the LDM tensor ``key``; unknown names pass unchanged."""
    key = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", key)
    key = re.sub(r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2.", key)
    key = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", key)
    key = re.sub(
        r"^decoder\.up\.(\d+)\.block\.(\d+)\.",
        lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.resnets.{m[2]}.",
        key,
    )
    key = re.sub(
        r"^decoder\.up\.(\d+)\.upsample\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.", key
    )
    key = re.sub(r"\.mid\.block_(\d+)\.", lambda m: f".mid_block.resnets.{int(m[1]) - 1}.", key)
    key = re.sub(r"\.mid\.attn_1\.(\w+)\.", lambda m: f".mid_block.attentions.0.{_ATTENTION.get(m[1], m[1])}.", key)
    key = key.replace(".nin_shortcut.", ".conv_shortcut.")
    if _PROJECTION_WEIGHT.search(key) and len(shape) == 5 and shape[2:] == (1, 1, 1):
        shape = shape[:2]
    return key, shape
