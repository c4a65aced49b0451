"""Every model's checkpoint-key table: our names -> the reference library's keys -> our names.

Each reference model (diffusers / transformers, tiny config) is saved in its real layout
and loaded through ``from_pretrained``; ``to_checkpoint_state_dict`` must then give back
exactly the reference's keys and tensors (less the keys the model deliberately ignores),
and ``from_checkpoint_state_dict`` must give back our state dict.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from framepack.models.clip import CLIPTextEncoder
from framepack.models.llama import LlamaTextEncoder
from framepack.models.loading import (
    KeyRule,
    PretrainedModel,
    checkpoint_keys_of,
    from_checkpoint_state_dict,
    key_rule,
    to_checkpoint_state_dict,
)
from framepack.models.siglip import SiglipImageEncoder
from framepack.models.transformer import FramePackTransformer
from framepack.models.vae import HunyuanVideoVAE
from tests import encoder_fixtures
from tests.transformer_support import build_diffusers_model

# Checked, not imported: importing them takes seconds, which only the reference models need.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("diffusers") is None or importlib.util.find_spec("transformers") is None,
    reason="the reference models need diffusers and transformers",
)


def _save_vae(folder: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKLHunyuanVideo

    from tests.test_vae import TINY

    torch.manual_seed(0)
    reference = AutoencoderKLHunyuanVideo(**TINY)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p))
    reference.save_pretrained(folder)
    return reference


MODELS: dict[str, tuple[type[PretrainedModel], Callable[[Path], torch.nn.Module]]] = {
    "transformer": (FramePackTransformer, lambda folder: build_diffusers_model(folder, seed=3)),
    "vae": (HunyuanVideoVAE, _save_vae),
    "llama": (LlamaTextEncoder, encoder_fixtures.save_llama),
    "clip": (CLIPTextEncoder, encoder_fixtures.save_clip),
    "siglip": (SiglipImageEncoder, encoder_fixtures.save_siglip),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_key_table_round_trips_to_the_reference_keys(name: str, tmp_path: Path) -> None:
    model_class, save_reference = MODELS[name]
    reference = save_reference(tmp_path)
    ours = model_class.from_pretrained(tmp_path)

    expected = reference.state_dict()
    expected = {k.removeprefix(ours.checkpoint_prefix(set(expected))): v for k, v in expected.items()}
    expected = {k: v for k, v in expected.items() if k not in ours.ignored_checkpoint_keys(set(expected))}
    saved = to_checkpoint_state_dict(ours)
    assert sorted(saved) == sorted(expected)
    assert all(torch.equal(saved[k], expected[k].to(saved[k].dtype)) for k in expected)

    back = from_checkpoint_state_dict(ours, saved)
    state = ours.state_dict()
    assert list(back) == list(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_no_placeholder_modules_or_shells_without_forward() -> None:
    """Every module either computes something or is a list of blocks: nothing exists only for a key path."""
    models = [
        model_class(model_class.config_class.preset("tiny"))
        for model_class in (
            FramePackTransformer,
            HunyuanVideoVAE,
            LlamaTextEncoder,
            CLIPTextEncoder,
            SiglipImageEncoder,
        )
    ]
    for model in models:
        for path, module in model.named_modules():
            assert not isinstance(module, torch.nn.Identity), f"{type(model).__name__}.{path} is a placeholder"
            if not path or isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
                continue  # the model itself (the VAE's entry points are encode/decode) and lists of blocks
            has_forward = type(module).forward is not torch.nn.Module.forward
            assert has_forward, f"{type(model).__name__}.{path} ({type(module).__name__}) has no forward"


def test_rules_rename_fuse_and_match_whole_segments() -> None:
    table = [
        key_rule("blocks.*.qkv", "layers.*.q", "layers.*.k", "layers.*.v"),
        key_rule("blocks.*.out", "layers.*.to_out.0"),
        key_rule("*.mid.*.proj", "*.mid.*.to_out.0"),
    ]
    fused = ["layers.3.q.weight", "layers.3.k.weight", "layers.3.v.weight"]
    assert checkpoint_keys_of(table, "blocks.3.qkv.weight") == fused
    assert checkpoint_keys_of(table, "blocks.12.out.bias") == ["layers.12.to_out.0.bias"]
    assert checkpoint_keys_of(table, "decoder.mid.0.proj.weight") == ["decoder.mid.0.to_out.0.weight"]
    # whole segments only
    assert checkpoint_keys_of(table, "blocks.3.qkv_extra.weight") == ["blocks.3.qkv_extra.weight"]
    assert checkpoint_keys_of(
        [key_rule("blocks.*.norm", "layers.*.norm_q.weight", "layers.*.norm_k.weight")], "blocks.1.norm"
    ) == ["layers.1.norm_q.weight", "layers.1.norm_k.weight"]  # a parameter
    assert KeyRule("a", ("b",)).checkpoint_keys("ab.weight") is None
