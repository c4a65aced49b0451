"""Shared pieces of the transformer tests: tiny random checkpoints, inputs, an independent forward.

``reference_forward`` is a plain-torch transcription of FramePack's hunyuan_video_packed.py written
against the checkpoint's own key names; it imports nothing from framepack, so it is a
second reference next to diffusers (and the only one for paths diffusers cannot run:
no clean context, no image embeddings).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

TINY = dict(
    in_channels=16,
    out_channels=16,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=2,
    num_single_layers=2,
    num_refiner_layers=2,
    mlp_ratio=4.0,
    patch_size=2,
    patch_size_t=1,
    qk_norm="rms_norm",
    guidance_embeds=True,
    text_embed_dim=32,
    pooled_projection_dim=16,
    rope_theta=256.0,
    rope_axes_dim=(4, 6, 6),
    has_image_proj=True,
    image_proj_dim=24,
    has_clean_x_embedder=True,
)


def randomise_(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (diffusers zero-inits some): weights ~ 1/sqrt(fan_in), vectors ~ N(0, 0.1²)+offset.

    Our models are drawn per checkpoint tensor (through their key table), in sorted key
    order: the same rule for the same tensor as diffusers' model, whatever our modules are
    called. Other modules (diffusers') are drawn in their parameter order.
    """
    from framepack.models.loading import PretrainedModel, to_checkpoint_state_dict

    if isinstance(module, PretrainedModel):
        tensors = to_checkpoint_state_dict(module)  # views of our parameters: fused ones split back
        tensors = {name: tensors[name] for name in sorted(tensors)}
    else:
        tensors = dict(module.named_parameters())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tensors.items():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif (
                name.endswith("norm_q.weight")
                or "norm_k" in name
                or "norm_added" in name
                or "norm1.weight" in name
                or "norm2.weight" in name
            ):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def build_diffusers_model(folder: Path | None = None, seed: int = 0, **overrides):
    """Tiny random diffusers model; saved sharded (with an index json) when ``folder`` is given."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideoFramepackTransformer3DModel(**{**TINY, **overrides}).eval()
    randomise_(model, seed)
    if folder is not None:
        model.save_pretrained(folder, max_shard_size="60KB", safe_serialization=True)
    return model


def make_inputs(
    batch: int,
    text_lengths: list[int],
    seed: int = 1,
    *,
    layout: str = "inverted",
    frames: int = 3,
    height: int = 10,
    width: int = 14,
    text_len: int = 9,
    n_image: int = 5,
) -> dict:
    """Noisy latents, conditioning tensors and a packed context laid out as the reference demos lay out a section."""
    g = torch.Generator().manual_seed(seed)
    w = frames
    if layout == "inverted":  # pad 1 of n = 2: sizes [1, P, w, 1, 2, 16]
        pad = 1
        idx = torch.arange(0, 1 + pad * w + w + 1 + 2 + 16)
        pre, _, latent, post, two, four = idx.split([1, pad * w, w, 1, 2, 16])
        clean_idx = torch.cat([pre, post])
    else:  # F1: sizes [1, 16, 2, 1, w]
        idx = torch.arange(0, 1 + 16 + 2 + 1 + w)
        start, four, two, one, latent = idx.split([1, 16, 2, 1, w])
        clean_idx = torch.cat([start, one])
    mask = torch.zeros(batch, text_len, dtype=torch.bool)
    for b, n in enumerate(text_lengths):
        mask[b, :n] = True
    text = torch.randn(batch, text_len, 32, generator=g) * mask[..., None]
    return dict(
        latents=torch.randn(batch, 16, frames, height, width, generator=g),
        timestep=torch.tensor([937.0, 412.5, 120.0, 700.0][:batch]),
        text=text,
        text_mask=mask,
        pooled=torch.randn(batch, 16, generator=g),
        guidance=torch.tensor([10.0, 6.0, 1.0, 3.5][:batch]),
        image=torch.randn(batch, n_image, 24, generator=g),
        latent_indices=latent[None],
        clean=torch.randn(batch, 16, 2, height, width, generator=g),
        clean_indices=clean_idx[None],
        clean_2x=torch.randn(batch, 16, 2, height, width, generator=g),
        clean_2x_indices=two[None],
        clean_4x=torch.randn(batch, 16, 16, height, width, generator=g),
        clean_4x_indices=four[None],
    )


def conditioning_and_context(inputs: dict, *, with_context: bool = True, with_image: bool = True):
    from framepack.conditioning import Conditioning, PackedContext

    cond = Conditioning(
        inputs["text"],
        inputs["text_mask"],
        inputs["pooled"],
        inputs["guidance"],
        inputs["image"] if with_image else None,
    )
    if not with_context:
        return cond, None
    keys = ["latent_indices", "clean", "clean_indices", "clean_2x", "clean_2x_indices", "clean_4x", "clean_4x_indices"]
    return cond, PackedContext(**{k: inputs[k] for k in keys})


def select(inputs: dict, b: int) -> dict:
    """Sample ``b`` of a batch of inputs (index tensors are shared, [1, t])."""
    return {
        k: (
            v[b : b + 1]
            if k
            in {
                "latents",
                "timestep",
                "text",
                "text_mask",
                "pooled",
                "guidance",
                "image",
                "clean",
                "clean_2x",
                "clean_4x",
            }
            else v
        )
        for k, v in inputs.items()
    }


def tolerance(reference: torch.Tensor) -> float:
    return 1e-5 * max(1.0, reference.abs().max().item())


# --- independent transcription of hunyuan_video_packed.py (batch 1, as the reference crops the text) ----


def reference_forward(
    sd: dict[str, torch.Tensor], cfg: dict, inputs: dict, *, with_context: bool = True, with_image: bool = True
) -> torch.Tensor:
    nh, hd = cfg["num_attention_heads"], cfg["attention_head_dim"]
    axes, theta = cfg["rope_axes_dim"], cfg["rope_theta"]
    hs, t, text, mask = inputs["latents"], inputs["timestep"], inputs["text"], inputs["text_mask"]
    assert hs.shape[0] == 1, "the transcription follows the reference's batch-1 path"

    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])

    def ln(x, w=None, b=None):
        return F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-6)

    def rms(x, w):
        v = x.float().pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(v + 1e-6)).to(x.dtype) * w.to(x.dtype)

    def sinus(v):
        freq = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
        arg = v.float()[:, None] * freq[None]
        return torch.cat([torch.cos(arg), torch.sin(arg)], -1)

    def mlp(x, name):
        return lin(F.silu(lin(x, name + ".linear_1")), name + ".linear_2")

    def rope_tab(indices, hp, wp):  # -> [1, 2hd, t, hp, wp]
        f, y, x = torch.meshgrid(indices.float(), torch.arange(hp).float(), torch.arange(wp).float(), indexing="ij")
        cos, sin = [], []
        for pos, d in zip((f, y, x), axes):
            omega = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
            a = (pos[..., None] * omega).repeat_interleave(2, dim=-1)
            cos.append(torch.cos(a))
            sin.append(torch.sin(a))
        return torch.cat(cos + sin, -1).permute(3, 0, 1, 2)[None]

    def pad(x, k):
        p = [(kk - s % kk) % kk for s, kk in zip(x.shape[2:], k)]
        return F.pad(x, (0, p[2], 0, p[1], 0, p[0]), mode="replicate")

    def rope(x, table):  # x [1, L, nh, hd], table [1, L, 2hd]
        cos, sin = table[:, :, None, :].chunk(2, -1)
        re, im = x.unflatten(-1, (-1, 2)).unbind(-1)
        rot = torch.stack([-im, re], -1).flatten(-2)
        return (x.float() * cos + rot.float() * sin).to(x.dtype)

    def attn(q, k, v, m=None):
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=m)
        return o.transpose(1, 2).flatten(2)

    def heads(x):
        return x.unflatten(-1, (nh, hd))

    x = F.conv3d(hs, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=(1, 2, 2))
    n_t, hp, wp = x.shape[2:]
    x = x.flatten(2).transpose(1, 2)
    n_noisy = x.shape[1]
    indices = inputs["latent_indices"][0] if with_context else torch.arange(hs.shape[2])
    table = rope_tab(indices, hp, wp).flatten(2).transpose(1, 2)
    if with_context:
        groups = [
            ("proj", "clean", (1, 2, 2), 1),
            ("proj_2x", "clean_2x", (2, 4, 4), 2),
            ("proj_4x", "clean_4x", (4, 8, 8), 4),
        ]
        for conv, key, k, pool in groups:
            lat = pad(inputs[key], k)
            tok = F.conv3d(lat, sd[f"clean_x_embedder.{conv}.weight"], sd[f"clean_x_embedder.{conv}.bias"], stride=k)
            tab = rope_tab(inputs[key + "_indices"][0], hp, wp)
            if pool > 1:
                tab = F.avg_pool3d(pad(tab, (pool,) * 3), pool, stride=pool)
            x = torch.cat([tok.flatten(2).transpose(1, 2), x], 1)
            table = torch.cat([tab.flatten(2).transpose(1, 2), table], 1)

    g_raw = 1000 * inputs["guidance"]
    temb = mlp(sinus(t), "time_text_embed.timestep_embedder") + mlp(sinus(g_raw), "time_text_embed.guidance_embedder")
    temb = temb + mlp(inputs["pooled"], "time_text_embed.text_embedder")

    m = mask.float()[..., None]
    mean = (text * m).sum(1) / m.sum(1)
    temb_txt = mlp(sinus(t), "context_embedder.time_text_embed.timestep_embedder")
    temb_txt = temb_txt + mlp(mean, "context_embedder.time_text_embed.text_embedder")
    h = lin(text, "context_embedder.proj_in")
    amask = mask[:, None, :, None] & mask[:, None, None, :]
    amask[:, :, :, 0] = True
    for i in range(cfg["num_refiner_layers"]):
        p = f"context_embedder.token_refiner.refiner_blocks.{i}."
        n1 = ln(h, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        a = attn(
            heads(lin(n1, p + "attn.to_q")), heads(lin(n1, p + "attn.to_k")), heads(lin(n1, p + "attn.to_v")), amask
        )
        a = lin(a, p + "attn.to_out.0")
        g1, g2 = lin(F.silu(temb_txt), p + "norm_out.linear").chunk(2, -1)
        h = h + a * g1[:, None]
        f = lin(F.silu(lin(ln(h, sd[p + "norm2.weight"], sd[p + "norm2.bias"]), p + "ff.net.0.proj")), p + "ff.net.2")
        h = h + f * g2[:, None]
    c, cmask = h, mask
    if with_image:
        img = lin(F.silu(lin(inputs["image"], "image_projection.up")), "image_projection.down")
        c = torch.cat([img, c], 1)
        cmask = torch.cat([torch.ones(1, img.shape[1], dtype=torch.bool), mask], 1)
    c = c[:, : int(cmask.sum())]
    n_x = x.shape[1]

    def gelu(v):
        return F.gelu(v, approximate="tanh")

    for i in range(cfg["num_layers"]):
        p = f"transformer_blocks.{i}."
        sh, sc, g, sh2, sc2, g2 = lin(F.silu(temb), p + "norm1.linear").chunk(6, -1)
        csh, csc, cg, csh2, csc2, cg2 = lin(F.silu(temb), p + "norm1_context.linear").chunk(6, -1)
        xn = ln(x) * (1 + sc[:, None]) + sh[:, None]
        cn = ln(c) * (1 + csc[:, None]) + csh[:, None]
        q = rope(rms(heads(lin(xn, p + "attn.to_q")), sd[p + "attn.norm_q.weight"]), table)
        k = rope(rms(heads(lin(xn, p + "attn.to_k")), sd[p + "attn.norm_k.weight"]), table)
        v = heads(lin(xn, p + "attn.to_v"))
        cq = rms(heads(lin(cn, p + "attn.add_q_proj")), sd[p + "attn.norm_added_q.weight"])
        ck = rms(heads(lin(cn, p + "attn.add_k_proj")), sd[p + "attn.norm_added_k.weight"])
        cv = heads(lin(cn, p + "attn.add_v_proj"))
        o = attn(torch.cat([q, cq], 1), torch.cat([k, ck], 1), torch.cat([v, cv], 1))
        x = x + lin(o[:, :n_x], p + "attn.to_out.0") * g[:, None]
        c = c + lin(o[:, n_x:], p + "attn.to_add_out") * cg[:, None]
        x = x + g2[:, None] * lin(
            gelu(lin(ln(x) * (1 + sc2[:, None]) + sh2[:, None], p + "ff.net.0.proj")), p + "ff.net.2"
        )
        c = c + cg2[:, None] * lin(
            gelu(lin(ln(c) * (1 + csc2[:, None]) + csh2[:, None], p + "ff_context.net.0.proj")), p + "ff_context.net.2"
        )
    for i in range(cfg["num_single_layers"]):
        p = f"single_transformer_blocks.{i}."
        u = torch.cat([x, c], 1)
        sh, sc, g = lin(F.silu(temb), p + "norm.linear").chunk(3, -1)
        un = ln(u) * (1 + sc[:, None]) + sh[:, None]
        mlp_h = gelu(lin(un, p + "proj_mlp"))
        q = rms(heads(lin(un, p + "attn.to_q")), sd[p + "attn.norm_q.weight"])
        k = rms(heads(lin(un, p + "attn.to_k")), sd[p + "attn.norm_k.weight"])
        v = heads(lin(un, p + "attn.to_v"))
        q = torch.cat([rope(q[:, :n_x], table), q[:, n_x:]], 1)
        k = torch.cat([rope(k[:, :n_x], table), k[:, n_x:]], 1)
        o = attn(q, k, v)
        u = u + g[:, None] * lin(torch.cat([o, mlp_h], -1), p + "proj_out")
        x, c = u[:, :n_x], u[:, n_x:]
    sc, sh = lin(F.silu(temb), "norm_out.linear").chunk(2, -1)
    y = (ln(x) * (1 + sc[:, None]) + sh[:, None])[:, -n_noisy:]
    y = lin(y.float(), "proj_out")
    y = y.reshape(1, n_t, hp, wp, -1, 1, 2, 2).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return y.reshape(1, -1, n_t, hp * 2, wp * 2)
