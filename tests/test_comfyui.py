"""A ComfyUI models folder: the files found by their usual names, a missing or ambiguous one
named, and a pipeline loaded from it generating exactly what the native repos generate."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from framepack import FramePackPipeline, GenerationConfig
from framepack.cli import main
from framepack.comfyui import find_comfyui_files, transformer_mode
from framepack.components import tiny_components, tiny_configs
from framepack.errors import CheckpointError, ConfigError
from framepack.models import single_file
from tests.lora_support import save_lora, write_lora
from tests.single_file_support import write_comfyui_folder, write_native_repos

FAST = dict(window=3, steps=2, resolution=64, seconds=0.8)
USUAL = {
    "diffusion_models/FramePackI2V_HY_bf16.safetensors": "transformer",
    "text_encoders/llava_llama3_fp16.safetensors": "text_encoder",
    "text_encoders/clip_l.safetensors": "text_encoder_2",
    "clip_vision/sigclip_vision_patch14_384.safetensors": "image_encoder",
    "vae/hunyuan_video_vae_bf16.safetensors": "vae",
}


def touch(root: Path, *names: str) -> Path:
    """Empty files under ``root``: the search reads names only."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def found(root: Path, **kwargs) -> dict[str, str]:
    return {k: str(v.relative_to(root)) for k, v in find_comfyui_files(root, **kwargs).items()}


def test_the_usual_names_in_the_usual_folders_are_found(tmp_path: Path) -> None:
    assert found(touch(tmp_path, *USUAL)) == {v: k for k, v in USUAL.items()}


def test_the_alternative_folders_suffixes_case_and_sub_folders_are_found(tmp_path: Path) -> None:
    names = [
        "unet/FramePack/framepacki2v_hy_fp8_e4m3fn.safetensors",
        "clip/llava_llama3_fp8_scaled.safetensors",
        "clip/CLIP_L.safetensors",
        "clip_vision/siglip_vision_patch14_384.safetensors",
        "vae/hunyuan_video_vae_fp32.safetensors",
    ]
    assert sorted(
        found(touch(tmp_path, *names, "vae/other_vae.safetensors", "clip/t5xxl.safetensors")).values()
    ) == sorted(names)


def test_a_missing_file_says_what_was_looked_for_where(tmp_path: Path) -> None:
    touch(tmp_path, *[n for n in USUAL if not n.startswith("vae/")])
    with pytest.raises(CheckpointError) as caught:
        find_comfyui_files(tmp_path)
    assert str(caught.value) == (
        f"no HunyuanVideo VAE file in {tmp_path}: looked for hunyuan_video_vae*.safetensors in vae/ "
        "(none of them exists); put it there or name the file (vae= / --vae-file)"
    )


def test_two_candidates_are_both_named_and_a_given_file_wins(tmp_path: Path) -> None:
    touch(tmp_path, *USUAL, "diffusion_models/FramePackI2V_HY_fp8_e4m3fn.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"2 candidate FramePack transformer files in .*: diffusion_models/FramePackI2V_HY_bf16.safetensors, diffusion_models/FramePackI2V_HY_fp8_e4m3fn.safetensors",
    ):
        find_comfyui_files(tmp_path)
    chosen = tmp_path / "diffusion_models/FramePackI2V_HY_fp8_e4m3fn.safetensors"
    assert find_comfyui_files(tmp_path, given={"transformer": chosen})["transformer"] == chosen


def test_the_mode_picks_the_i2v_or_the_f1_transformer(tmp_path: Path) -> None:
    f1 = "diffusion_models/FramePack_F1_I2V_HY_20250503_bf16.safetensors"
    touch(tmp_path, *USUAL, f1)
    assert found(tmp_path, mode="forward")["transformer"] == f1
    assert found(tmp_path, mode="inverted")["transformer"] == "diffusion_models/FramePackI2V_HY_bf16.safetensors"
    with pytest.raises(CheckpointError, match="both the I2V .* and the F1 .* transformer"):
        find_comfyui_files(tmp_path)
    assert transformer_mode(f1) == "forward" and transformer_mode("FramePackI2V_HY_bf16.safetensors") == "inverted"
    assert transformer_mode("my_finetune.safetensors") is None


def test_a_mode_without_its_transformer_names_the_one_there(tmp_path: Path) -> None:
    touch(tmp_path, *USUAL)
    with pytest.raises(
        CheckpointError,
        match=r"forward mode runs the F1 transformer .* but only the I2V one is there \(diffusion_models/FramePackI2V_HY_bf16.safetensors\)",
    ):
        find_comfyui_files(tmp_path, mode="forward")


def test_a_models_folder_that_is_not_there_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"ComfyUI models folder {tmp_path / 'nope'} does not exist"):
        FramePackPipeline.from_comfyui(tmp_path / "nope")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The same tiny random components as a ComfyUI folder and as the native repos."""
    root = tmp_path_factory.mktemp("weights")
    components = tiny_components(seed=3)
    repos = write_native_repos(root / "repos", components)
    return dict(**repos, comfyui=write_comfyui_folder(root / "models", components))


def test_a_pipeline_from_a_comfyui_folder_generates_what_the_native_repos_do(folders, tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    native = FramePackPipeline.from_pretrained(
        folders["transformer"], hunyuan=folders["hunyuan"], redux=folders["redux"], device="cpu"
    )
    comfy = FramePackPipeline.from_comfyui(
        folders["comfyui"], tokenizers=folders["hunyuan"], configs=tiny_configs(), device="cpu", mode="inverted"
    )
    assert comfy.components.weights_digest() == native.components.weights_digest()
    config = GenerationConfig(**FAST)
    a = native.generate(image, "a dancer", config, run_dir=tmp_path / "native")
    b = comfy.generate(image, "a dancer", config, run_dir=tmp_path / "comfy")
    assert torch.equal(a.latents, b.latents)
    assert all(np.array_equal(x, y) for x, y in zip(a.frames(), b.frames(), strict=True))


def test_fp8_quantizes_the_comfyui_transformer_as_from_pretrained_does(folders) -> None:
    kwargs = dict(device="cpu", weights="fp8")
    native = FramePackPipeline.from_pretrained(
        folders["transformer"], hunyuan=folders["hunyuan"], redux=folders["redux"], **kwargs
    )
    comfy = FramePackPipeline.from_comfyui(
        folders["comfyui"], tokenizers=folders["hunyuan"], configs=tiny_configs(), **kwargs
    )
    block = comfy.components.transformer.double_blocks[0].image_qkv
    assert block.weight.dtype == torch.float8_e4m3fn and block.weight_scale is not None
    assert comfy.components.weights_digest() == native.components.weights_digest()


def test_loras_apply_to_a_comfyui_pipeline_as_to_from_pretrained(folders, tmp_path: Path) -> None:
    lora = save_lora(tmp_path / "style.safetensors", write_lora("musubi-framepack")[0])
    kwargs = dict(device="cpu", loras=[(lora, 0.7)])
    native = FramePackPipeline.from_pretrained(
        folders["transformer"], hunyuan=folders["hunyuan"], redux=folders["redux"], **kwargs
    )
    comfy = FramePackPipeline.from_comfyui(
        folders["comfyui"], tokenizers=folders["hunyuan"], configs=tiny_configs(), **kwargs
    )
    assert [(e.digest, e.strength) for e in comfy.components.transformer.loras()] == [
        (e.digest, e.strength) for e in native.components.transformer.loras()
    ]
    image = np.random.default_rng(1).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    config = GenerationConfig(**FAST)
    a = native.generate(image, "a dancer", config, run_dir=tmp_path / "native")
    b = comfy.generate(image, "a dancer", config, run_dir=tmp_path / "comfy")
    assert torch.equal(a.latents, b.latents)


def test_unknown_config_names_are_refused(folders) -> None:
    with pytest.raises(ConfigError, match=r"configs: unknown component\(s\) \['unet'\]"):
        FramePackPipeline.from_comfyui(folders["comfyui"], tokenizers=folders["hunyuan"], configs={"unet": None})


# --- the command -----------------------------------------------------------------------------------
@pytest.fixture()
def image_file(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(path)
    return path


def run_command(arguments: list[str], capsys) -> tuple[int, str]:
    status = main(arguments)
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--comfyui", "{models}"], "error: no HunyuanVideo VAE file in {models}: looked for hunyuan_video_vae*"),
        (
            ["--comfyui", "{models}", "--vae-file", "/no/vae.safetensors"],
            "error: --vae-file: expected a .safetensors file, but '/no/vae.safetensors' does not exist",
        ),
        (
            ["--transformer-file", "{models}/diffusion_models/FramePackI2V_HY_bf16.safetensors"],
            "error: single weight files: also give --text-encoder-file, --clip-file, --image-encoder-file, --vae-file, or --comfyui DIR",
        ),
        (["--comfyui", "{models}", "--tiny"], "error: --tiny: not with --comfyui"),
        (["--comfyui", "{models}", "--model", "f1"], "error: --model: not with --comfyui"),
        (["--tokenizers", "{models}"], "error: --tokenizers: only with --comfyui or the --*-file flags"),
        (
            ["--comfyui", "{models}", "--tokenizers", "{models}"],
            "error: --tokenizers: '{models}' lacks tokenizer/tokenizer.json, tokenizer_2/vocab.json, tokenizer_2/merges.txt",
        ),
        (["--comfyui", "{models}", "--mode", "forward"], "error: forward mode runs the F1 transformer"),
    ],
)
def test_the_command_names_a_missing_file_before_loading_any(
    flags: list[str], message: str, tmp_path: Path, image_file: Path, capsys
) -> None:
    models = touch(tmp_path / "models", *[n for n in USUAL if not n.startswith("vae/")])  # empty: never read
    flags = [f.format(models=models) for f in flags]
    status, err = run_command(
        ["generate", "--image", str(image_file), "--out", str(tmp_path / "o.mp4"), *flags], capsys
    )
    assert status == 2
    assert err.startswith(message.format(models=models)) and err.count("\n") == 1


def test_the_command_generates_from_a_comfyui_folder(
    folders, tmp_path: Path, image_file: Path, monkeypatch, capsys
) -> None:
    # The files are tiny: read them with the tiny configs where real files get the official ones.
    tiny = tiny_configs()
    classes = {name: type(model) for name, model in tiny_components().modules().items()}
    monkeypatch.setitem(single_file.OFFICIAL_CONFIGS, classes["transformer"], lambda: tiny["transformer"])
    for name in ("text_encoder", "text_encoder_2", "image_encoder", "vae"):
        monkeypatch.setitem(single_file.OFFICIAL_CONFIGS, classes[name], lambda name=name: tiny[name])
    out = tmp_path / "video.mp4"
    arguments = ["generate", "--comfyui", str(folders["comfyui"]), "--tokenizers", str(folders["hunyuan"])]
    arguments += ["--image", str(image_file), "--prompt", "a dancer", "--out", str(out), "--device", "cpu"]
    arguments += ["--seconds", "0.8", "--window", "3", "--steps", "2", "--resolution", "64"]
    assert main(arguments) == 0, capsys.readouterr().err
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4 * (2 * 3 + 1) - 3
