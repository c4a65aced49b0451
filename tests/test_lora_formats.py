"""load_lora reads the four LoRA formats in circulation (and their variants), written by hand
here, and refuses a file it cannot read completely with a CheckpointError naming the key and file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from framepack.errors import CheckpointError
from framepack.lora import load_lora
from tests.lora_support import FORMATS, save_lora, write_lora

EXPECTED_FORMAT = {
    "musubi-framepack": "musubi-framepack",
    "kohya-hunyuanvideo": "kohya-hunyuanvideo",
    "diffusion-pipe": "diffusion-pipe",
    "diffusion-pipe-down-up": "diffusion-pipe",
    "diffusion-pipe-transformer-prefix": "diffusion-pipe",
    "diffusers": "diffusers",
    "diffusers-alpha": "diffusers",
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_is_detected_and_read(fmt: str, tmp_path: Path) -> None:
    tensors, _ = write_lora(fmt, rank=3, seed=1)
    path = save_lora(tmp_path / "style.safetensors", tensors)
    weights = load_lora(path)
    assert weights.format == EXPECTED_FORMAT[fmt]
    assert weights.source == str(path)
    assert weights.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    downs = {k: v for k, v in tensors.items() if k.endswith(("lora_down.weight", "lora_A.weight"))}
    assert sorted(p.key for p in weights.pairs) == sorted(downs)
    for pair in weights.pairs:
        assert torch.equal(pair.down, downs[pair.key]) and pair.rank == 3
        alpha_key = next(
            (k for k in tensors if k.endswith(".alpha") and pair.key.startswith(k[: -len(".alpha")])), None
        )
        assert pair.scale == (1.0 if alpha_key is None else float(tensors[alpha_key]) / 3)


def test_state_dict_source_and_its_digest() -> None:
    tensors, _ = write_lora("musubi-framepack", seed=2)
    first, again = load_lora(tensors), load_lora(dict(tensors))
    assert first.source == "<state dict>" and first.digest == again.digest and len(first.digest) == 64
    changed = dict(tensors)
    key = next(iter(changed))
    changed[key] = changed[key] + 1e-3
    assert load_lora(changed).digest != first.digest


def bad(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    return save_lora(tmp_path / "bad_lora.safetensors", tensors)


def test_missing_half_of_a_pair(tmp_path: Path) -> None:
    tensors, _ = write_lora("diffusion-pipe", seed=3)
    del tensors["diffusion_model.single_blocks.0.linear2.lora_B.weight"]
    with pytest.raises(
        CheckpointError,
        match=r"bad_lora\.safetensors.*'diffusion_model\.single_blocks\.0\.linear2\.lora_A\.weight' has no matching up",
    ):
        load_lora(bad(tmp_path, tensors))


def test_rank_of_up_and_down_disagree(tmp_path: Path) -> None:
    tensors, _ = write_lora("musubi-framepack", seed=4)
    key = "lora_unet_transformer_blocks_0_ff_net_2.lora_up.weight"
    tensors[key] = torch.zeros(tensors[key].shape[0], 5)
    with pytest.raises(
        CheckpointError, match=r"bad_lora\.safetensors.*ff_net_2\.lora_up\.weight.*expected up \[out, 4\]"
    ):
        load_lora(bad(tmp_path, tensors))


def test_alpha_must_be_a_scalar(tmp_path: Path) -> None:
    tensors, _ = write_lora("kohya-hunyuanvideo", seed=5)
    tensors["lora_unet_single_blocks_0_linear1.alpha"] = torch.ones(2)
    with pytest.raises(CheckpointError, match=r"lora_unet_single_blocks_0_linear1\.alpha.*scalar"):
        load_lora(bad(tmp_path, tensors))


def test_text_encoder_keys_are_refused(tmp_path: Path) -> None:
    tensors, _ = write_lora("musubi-framepack", seed=6)
    tensors["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 8)
    with pytest.raises(
        CheckpointError, match=r"bad_lora\.safetensors.*lora_te1_text_model_encoder_layers_0_mlp_fc1.*text-encoder"
    ):
        load_lora(bad(tmp_path, tensors))


def test_unrecognised_format_names_the_first_keys(tmp_path: Path) -> None:
    tensors = {"base_model.model.blocks.0.q.lora_A.weight": torch.zeros(2, 4), "zzz": torch.zeros(1)}
    with pytest.raises(
        CheckpointError,
        match=r"bad_lora\.safetensors: unrecognised LoRA format: first keys \['base_model\.model\.blocks\.0\.q\.lora_A\.weight', 'zzz'\]",
    ):
        load_lora(bad(tmp_path, tensors))


def test_unknown_tensor_kinds_and_stray_keys_are_not_skipped(tmp_path: Path) -> None:
    tensors, _ = write_lora("diffusers", seed=7)
    dora = dict(tensors, **{"transformer.proj_out.lora_magnitude_vector": torch.ones(64)})
    with pytest.raises(
        CheckpointError, match=r"'transformer\.proj_out\.lora_magnitude_vector' is not part of a LoRA pair"
    ):
        load_lora(dora)
    stray = dict(tensors, **{"lora_unet_proj_out.lora_down.weight": torch.ones(4, 32)})
    with pytest.raises(
        CheckpointError,
        match=r"key 'lora_unet_proj_out\.lora_down\.weight' does not start with diffusion_model\. or transformer\.",
    ):
        load_lora(stray)


def test_files_that_are_not_safetensors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_lora(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_lora(garbage)
    with pytest.raises(CheckpointError, match="no tensors"):
        load_lora({})
