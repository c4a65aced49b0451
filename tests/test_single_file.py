"""Single files as users have them: each foreign layout, written here by hand from the facts of
the formats (not by the code under test), loads bit-identical to the native folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from framepack.components import tiny_configs
from framepack.errors import CheckpointError, ConfigError
from framepack.models.clip import CLIPTextEncoder
from framepack.models.llama import LlamaTextEncoder
from framepack.models.loading import PretrainedModel
from framepack.models.siglip import SiglipImageEncoder
from framepack.models.single_file import load_single_file
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.models.vae import HunyuanVideoVAE
from tests.single_file_support import checkpoint_tensors, comfy_org_vae, kijai_fp8, llava_llama3
from tests.transformer_support import conditioning_and_context, make_inputs, randomise_

CONFIGS = tiny_configs()


def random_model(cls: type[PretrainedModel], config, seed: int) -> PretrainedModel:
    model = cls(config)
    randomise_(model, seed)
    return model.eval()


def native_load(cls: type[PretrainedModel], config, tensors: dict[str, torch.Tensor], folder: Path) -> PretrainedModel:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    save_file(tensors, folder / f"{cls.weights_name}.safetensors")
    return cls.from_pretrained(folder, dtype=torch.float32)


def assert_same_weights(ours: PretrainedModel, native: PretrainedModel) -> None:
    a, b = ours.state_dict(), native.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


# --- the transformer: diffusers names, no prefix, one file (bf16, or fp8 Linear weights) ------------
TINY_TRANSFORMER = TransformerConfig.preset("tiny")


def transformer_output(model: FramePackTransformer) -> torch.Tensor:
    inputs = make_inputs(1, [7])
    cond, context = conditioning_and_context(inputs)
    with torch.no_grad():
        return model(inputs["latents"], inputs["timestep"], cond, context)


def test_transformer_single_file_equals_the_native_folder(tmp_path: Path) -> None:
    tensors = {
        k: v.to(torch.bfloat16)
        for k, v in checkpoint_tensors(random_model(FramePackTransformer, TINY_TRANSFORMER, 1)).items()
    }
    native = native_load(FramePackTransformer, TINY_TRANSFORMER, tensors, tmp_path / "native")
    save_file(tensors, tmp_path / "FramePackI2V_HY_bf16.safetensors")
    single = load_single_file(
        FramePackTransformer,
        tmp_path / "FramePackI2V_HY_bf16.safetensors",
        config=TINY_TRANSFORMER,
        dtype=torch.float32,
    )
    assert_same_weights(single, native)
    assert torch.equal(transformer_output(single), transformer_output(native))


def test_fp8_transformer_file_loads_its_fp8_values(tmp_path: Path) -> None:
    fp8 = kijai_fp8(checkpoint_tensors(random_model(FramePackTransformer, TINY_TRANSFORMER, 2)))
    assert sum(v.dtype == torch.float8_e4m3fn for v in fp8.values()) >= 20
    save_file(fp8, tmp_path / "FramePackI2V_HY_fp8_e4m3fn.safetensors")
    # The reference: the same fp8 numbers written exactly in float32, in a native folder.
    native = native_load(
        FramePackTransformer, TINY_TRANSFORMER, {k: v.float() for k, v in fp8.items()}, tmp_path / "native"
    )
    single = load_single_file(
        FramePackTransformer,
        tmp_path / "FramePackI2V_HY_fp8_e4m3fn.safetensors",
        config=TINY_TRANSFORMER,
        dtype=torch.float32,
    )
    for (name, ours), reference in zip(single.state_dict().items(), native.state_dict().values()):
        assert torch.equal(ours.float(), reference), name  # fp8 kept or upcast: the same values
    assert torch.equal(transformer_output(single), transformer_output(native))


# --- the encoders --------------------------------------------------------------------------------
def llama_output(model: LlamaTextEncoder) -> torch.Tensor:
    ids = torch.tensor([[128000, 5, 900, 77, 128258]])
    with torch.no_grad():
        return model(ids, torch.tensor([[1, 1, 1, 1, 0]]))


def test_llama_causal_lm_file_equals_the_native_folder(tmp_path: Path) -> None:
    config = CONFIGS["text_encoder"]
    tensors = checkpoint_tensors(random_model(LlamaTextEncoder, config, 3))
    native = native_load(LlamaTextEncoder, config, tensors, tmp_path / "native")
    foreign = llava_llama3(tensors, config.vocab_size, config.hidden_size)
    assert {"model.norm.weight", "lm_head.weight", "tokenizer"} <= set(foreign)
    save_file(foreign, tmp_path / "llava_llama3_fp16.safetensors")
    single = load_single_file(LlamaTextEncoder, tmp_path / "llava_llama3_fp16.safetensors", config=config)
    assert_same_weights(single, native)
    assert torch.equal(llama_output(single), llama_output(native))


@pytest.mark.parametrize(("prefix", "projection"), [("text_model.", False), ("", False), ("text_model.", True)])
def test_clip_l_file_equals_the_native_folder(tmp_path: Path, prefix: str, projection: bool) -> None:
    config = CONFIGS["text_encoder_2"]
    tensors = checkpoint_tensors(random_model(CLIPTextEncoder, config, 4))
    native = native_load(CLIPTextEncoder, config, tensors, tmp_path / "native")
    foreign = {prefix + k: v for k, v in tensors.items()}
    if projection:  # clip_l files made for SD3 / Flux keep CLIPTextModelWithProjection's projection
        foreign["text_projection.weight"] = torch.randn(config.hidden_size, config.hidden_size)
    save_file(foreign, tmp_path / "clip_l.safetensors")
    single = load_single_file(CLIPTextEncoder, tmp_path / "clip_l.safetensors", config=config)
    assert_same_weights(single, native)
    ids = torch.tensor([[49406, 40, 41, 49407, 49407]])
    with torch.no_grad():
        assert torch.equal(single(ids), native(ids))


def test_sigclip_vision_file_equals_the_native_folder(tmp_path: Path) -> None:
    config = CONFIGS["image_encoder"]
    tensors = checkpoint_tensors(random_model(SiglipImageEncoder, config, 5))
    native = native_load(SiglipImageEncoder, config, tensors, tmp_path / "native")
    foreign = {f"vision_model.{k}": v for k, v in tensors.items()}
    foreign["vision_model.head.probe"] = torch.randn(1, 1, config.hidden_size)  # SiglipVisionModel's pooling head
    foreign["vision_model.head.mlp.fc1.weight"] = torch.randn(config.intermediate_size, config.hidden_size)
    save_file(foreign, tmp_path / "sigclip_vision_patch14_384.safetensors")
    single = load_single_file(SiglipImageEncoder, tmp_path / "sigclip_vision_patch14_384.safetensors", config=config)
    assert_same_weights(single, native)
    pixels = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(single(pixels), native(pixels))


# --- the VAE: diffusers names (Kijai's file) or ComfyUI's LDM names (Comfy-Org's), one file name ------
def vae_output(model: HunyuanVideoVAE) -> torch.Tensor:
    latents = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.decode(latents)


@pytest.mark.parametrize("layout", ["diffusers", "ldm"])
def test_vae_file_in_either_layout_equals_the_native_folder(tmp_path: Path, layout: str) -> None:
    config = CONFIGS["vae"]
    tensors = checkpoint_tensors(random_model(HunyuanVideoVAE, config, 6))
    native = native_load(HunyuanVideoVAE, config, tensors, tmp_path / "native")
    foreign = tensors
    if layout == "ldm":
        foreign = comfy_org_vae(tensors, len(config.block_out_channels))
        # The writer's own facts: the decoder's last level (up.0) has no upsampler, the encoder's last no downsampler.
        assert (
            "decoder.up.3.upsample.conv.conv.weight" in foreign
            and "decoder.up.0.upsample.conv.conv.weight" not in foreign
        )
        assert (
            "encoder.down.0.downsample.conv.conv.weight" in foreign
            and "encoder.down.3.downsample.conv.conv.weight" not in foreign
        )
        assert foreign["decoder.mid.attn_1.q.weight"].shape[2:] == (1, 1, 1)
        assert "encoder.down.2.block.0.nin_shortcut.conv.weight" in foreign and "decoder.conv_in.conv.weight" in foreign
    save_file(foreign, tmp_path / "hunyuan_video_vae_bf16.safetensors")
    single = load_single_file(HunyuanVideoVAE, tmp_path / "hunyuan_video_vae_bf16.safetensors", config=config)
    assert_same_weights(single, native)
    assert torch.equal(vae_output(single), vae_output(native))
    mapped = load_single_file(
        HunyuanVideoVAE, tmp_path / "hunyuan_video_vae_bf16.safetensors", config=config, storage="mmap"
    )
    assert_same_weights(mapped, native)  # renamed and reshaped tensors still view the file


# --- strictness ------------------------------------------------------------------------------------
def test_a_missing_or_extra_tensor_is_named(tmp_path: Path) -> None:
    config = CONFIGS["vae"]
    foreign = comfy_org_vae(checkpoint_tensors(random_model(HunyuanVideoVAE, config, 7)), 4)
    del foreign["decoder.mid.attn_1.k.bias"]
    foreign["decoder.mid.attn_1.extra.weight"] = torch.zeros(2)
    save_file(foreign, tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError) as caught:
        load_single_file(HunyuanVideoVAE, tmp_path / "vae.safetensors", config=config)
    message = str(caught.value)
    assert "missing keys: decoder.mid_block.attentions.0.to_k.bias" in message
    assert "unexpected keys: decoder.mid_block.attentions.0.extra.weight" in message
    assert str(tmp_path / "vae.safetensors") in message and "LDM" in message


def test_the_official_config_is_the_default_and_a_mismatch_says_so(tmp_path: Path) -> None:
    tensors = checkpoint_tensors(random_model(CLIPTextEncoder, CONFIGS["text_encoder_2"], 8))
    save_file(tensors, tmp_path / "clip_l.safetensors")
    with pytest.raises(
        CheckpointError, match=r"shape mismatches: .*with the official config: a single file carries none"
    ):
        load_single_file(CLIPTextEncoder, tmp_path / "clip_l.safetensors")


def test_a_file_of_another_vae_is_refused(tmp_path: Path) -> None:
    save_file(
        {"decoder.norm_out.weight": torch.ones(4), "decoder.conv_in.weight": torch.ones(4, 4, 3, 3)},
        tmp_path / "v.safetensors",
    )
    with pytest.raises(CheckpointError, match="an image VAE in LDM names"):
        load_single_file(HunyuanVideoVAE, tmp_path / "v.safetensors", config=CONFIGS["vae"])


def test_a_config_of_another_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HunyuanVideoVAE takes a VAEConfig, got CLIPTextConfig"):
        load_single_file(HunyuanVideoVAE, tmp_path / "v.safetensors", config=CONFIGS["text_encoder_2"])
