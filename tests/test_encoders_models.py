"""Parity of the three encoders with transformers on tiny random checkpoints in the real layouts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framepack.errors import CheckpointError, ConfigError, InputError
from framepack.models.clip import CLIPTextConfig, CLIPTextEncoder
from framepack.models.llama import LlamaConfig, LlamaTextEncoder
from framepack.models.siglip import SiglipImageEncoder, SiglipPreprocessing, SiglipVisionConfig
from tests.encoder_fixtures import add_prefix, max_error_ok, save_clip, save_llama, save_siglip


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("text_encoder")
    ref = save_llama(folder)
    return ref, LlamaTextEncoder.from_pretrained(folder), folder


@pytest.fixture(scope="module")
def clip_pair(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("text_encoder_2")
    ref = save_clip(folder)
    return ref, CLIPTextEncoder.from_pretrained(folder), folder


@pytest.fixture(scope="module")
def siglip_pair(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("flux_redux_bfl")
    ref = save_siglip(root / "image_encoder")
    return ref, SiglipImageEncoder.from_pretrained(root, subfolder="image_encoder"), root


def llama_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 128320, (2, 19), generator=g)
    mask = torch.ones(2, 19, dtype=torch.long)
    mask[1, 11:] = 0  # right padding, as the checkpoint's tokenizer pads
    return ids, mask


@pytest.mark.parametrize("index", [-3, -1, 0, 2])
def test_llama_hidden_state_matches_transformers(llama_pair, index: int) -> None:
    ref, ours, _ = llama_pair
    ids, mask = llama_inputs()
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[index]
        got = ours(ids, mask, hidden_state_index=index)
    ok, err, bound = max_error_ok(got, expected)
    assert ok, f"index {index}: max error {err} > {bound}"


def test_llama_left_padding_matches_on_valid_tokens(llama_pair) -> None:
    ref, ours, _ = llama_pair
    ids, _ = llama_inputs()
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-3]
        got = ours(ids, mask)
    valid = mask.bool()
    ok, err, bound = max_error_ok(got[valid], expected[valid])
    assert ok and torch.isfinite(got).all(), f"max error {err} > {bound}"


def test_llama_runs_only_needed_layers(llama_pair) -> None:
    _, ours, _ = llama_pair
    ran: list[int] = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(ours.layers)]
    try:
        with torch.no_grad():
            ours(torch.tensor([[128000, 5, 6]]), hidden_state_index=-3)
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1]  # 4 layers, index -3 = output of layer 1


def test_llama_bad_index_and_shapes(llama_pair) -> None:
    _, ours, _ = llama_pair
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(InputError, match="hidden_state_index"):
        ours(ids, hidden_state_index=5)
    with pytest.raises(InputError, match="attention_mask"):
        ours(ids, torch.ones(1, 4))
    with pytest.raises(InputError, match="input_ids"):
        ours(ids.float())


def test_llama_config_accepts_real_4x_and_5x_files(llama_pair) -> None:
    _, _, folder = llama_pair
    saved = LlamaConfig.from_json(folder / "config.json")  # transformers 5.x: rope_parameters, dtype
    assert saved.rope_base == 500000.0 and saved.num_key_value_heads == 2
    real = {
        "architectures": ["LlamaModel"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
        "eos_token_id": 128001, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
        "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 8192, "mlp_bias": False,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 500000.0,
        "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.46.3",
        "use_cache": True, "vocab_size": 128320, "_name_or_path": "x",
    }  # fmt: skip
    config = LlamaConfig.from_dict(real)
    assert config == dataclasses.replace(LlamaConfig.preset("llava-llama-3-8b"), head_dim=128)
    assert config.rope_base == 500000.0 and config.attention_head_dim == 128
    with pytest.raises(ConfigError, match="RoPE"):
        LlamaConfig.from_dict({**real, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    with pytest.raises(ConfigError, match="preset"):
        LlamaConfig.preset("huge")


def test_llama_strict_loading_names_missing_layer(llama_pair, tmp_path: Path) -> None:
    _, _, folder = llama_pair
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    for name in folder.iterdir():
        (tmp_path / name.name).write_bytes(name.read_bytes())
    shard = index["weight_map"]["norm.weight"]
    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / shard)
    del tensors["norm.weight"]
    save_file(tensors, tmp_path / shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="norm.weight"):
        LlamaTextEncoder.from_pretrained(tmp_path)


def clip_inputs() -> torch.Tensor:
    ids = torch.full((2, 77), 49407)
    ids[:, 0] = 49406
    ids[0, 1:6] = torch.tensor([320, 1125, 539, 320, 2368])
    ids[0, 6] = 49407
    ids[1, 1:40] = torch.arange(100, 139)
    ids[1, 40] = 49407
    return ids


def test_clip_pooled_matches_transformers(clip_pair) -> None:
    ref, ours, _ = clip_pair
    ids = clip_inputs()
    with torch.no_grad():
        expected = ref(input_ids=ids).pooler_output
        got = ours(ids)
    assert got.shape == (2, 32)
    ok, err, bound = max_error_ok(got, expected)
    assert ok, f"max error {err} > {bound}"


def test_clip_loads_prefixed_4x_layout(clip_pair, tmp_path: Path) -> None:
    ref, _, folder = clip_pair
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    add_prefix(tmp_path, "text_model.")
    ours = CLIPTextEncoder.from_pretrained(tmp_path)
    ids = clip_inputs()
    with torch.no_grad():
        ok, err, bound = max_error_ok(ours(ids), ref(input_ids=ids).pooler_output)
    assert ok, f"max error {err} > {bound}"


def test_clip_config_accepts_real_file() -> None:
    real = {
        "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
        "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
        "model_type": "clip_text_model", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
        "projection_dim": 768, "torch_dtype": "float16", "transformers_version": "4.48.0.dev0", "vocab_size": 49408,
    }  # fmt: skip
    assert CLIPTextConfig.from_dict(real) == CLIPTextConfig.preset("clip-vit-large-patch14")
    with pytest.raises(ConfigError, match="hidden_act"):
        CLIPTextConfig.from_dict({**real, "hidden_act": "gelu"})


def test_clip_rejects_too_long_input(clip_pair) -> None:
    _, ours, _ = clip_pair
    with pytest.raises(InputError, match="77"):
        ours(torch.zeros(1, 78, dtype=torch.long))


def test_siglip_last_hidden_state_matches_transformers(siglip_pair) -> None:
    ref, ours, _ = siglip_pair
    pixels = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        expected = ref(pixel_values=pixels).last_hidden_state
        got = ours(pixels)
    assert got.shape == (2, 729, 32)
    ok, err, bound = max_error_ok(got, expected)
    assert ok, f"max error {err} > {bound}"


def test_siglip_loads_prefixed_4x_layout_with_head(siglip_pair, tmp_path: Path) -> None:
    ref, _, root = siglip_pair
    folder = tmp_path / "image_encoder"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((root / "image_encoder" / name).read_bytes())
    add_prefix(folder, "vision_model.")
    from safetensors.torch import load_file

    assert any(k.startswith("vision_model.head.") for k in load_file(folder / "model.safetensors"))
    ours = SiglipImageEncoder.from_pretrained(tmp_path, subfolder="image_encoder")
    pixels = torch.rand(1, 3, 384, 384, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ok, err, bound = max_error_ok(ours(pixels), ref(pixel_values=pixels).last_hidden_state)
    assert ok, f"max error {err} > {bound}"


def test_siglip_rejects_wrong_size(siglip_pair) -> None:
    _, ours, _ = siglip_pair
    with pytest.raises(InputError, match="384"):
        ours(torch.zeros(1, 3, 224, 224))


def test_siglip_config_accepts_real_file() -> None:
    real = {
        "_name_or_path": "google/siglip-so400m-patch14-384", "architectures": ["SiglipVisionModel"],
        "attention_dropout": 0.0, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1152, "image_size": 384,
        "intermediate_size": 4304, "layer_norm_eps": 1e-06, "model_type": "siglip_vision_model",
        "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 27, "patch_size": 14,
        "torch_dtype": "bfloat16", "transformers_version": "4.43.3",
    }  # fmt: skip
    config = SiglipVisionConfig.from_dict(real)
    assert config == SiglipVisionConfig.preset("siglip-so400m-patch14-384") and config.num_patches == 729


def reference_image_processor(root: Path | None = None):
    """transformers' PIL SigLIP processor (4.46's only one; 5.x's fallback without torchvision)."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    real = dict(
        do_resize=True, size={"height": 384, "width": 384}, resample=3, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    processor = SiglipImageProcessorPil(**real)
    if root is not None:
        processor.save_pretrained(root / "feature_extractor")
    return processor


@pytest.mark.parametrize("shape", [(480, 640), (200, 150), (384, 384)])
def test_siglip_preprocess_matches_transformers_pil(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = reference_image_processor()(images=image, return_tensors="pt").pixel_values
    got = SiglipPreprocessing()(image)
    assert got.dtype == torch.float32 and got.shape == (1, 3, 384, 384)
    assert torch.equal(got, expected)
    assert torch.equal(SiglipPreprocessing()(Image.fromarray(image)), expected)


def test_siglip_preprocessing_read_from_feature_extractor(siglip_pair, tmp_path: Path) -> None:
    _, _, root = siglip_pair
    (tmp_path / "image_encoder").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "image_encoder" / name).write_bytes((root / "image_encoder" / name).read_bytes())
    processor = reference_image_processor(tmp_path)
    processor.size = {"height": 200, "width": 300}
    processor.image_mean = [0.25, 0.5, 0.75]
    processor.save_pretrained(tmp_path / "feature_extractor")
    ours = SiglipImageEncoder.from_pretrained(tmp_path, subfolder="image_encoder")
    image = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    expected = processor(images=image, return_tensors="pt").pixel_values
    got = ours.preprocess(image)
    assert got.shape == (1, 3, 200, 300) and torch.equal(got, expected)


def test_siglip_preprocess_rejects_bad_images() -> None:
    with pytest.raises(InputError, match="uint8"):
        SiglipPreprocessing()(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(InputError, match=r"\[H, W, 3\]"):
        SiglipPreprocessing()(np.zeros((10, 10), dtype=np.uint8))
