"""Run-time LoRAs on FramePackTransformer equal the same LoRA merged into the checkpoint by hand.

Each format's file is written by hand (tests/lora_support.py), its update added to the
diffusers-named checkpoint weights in the test, and the merged checkpoint loaded through the
normal loader: the run-time model must give the merged model's output (float32, <= 1e-5
relative), stacked, after set_lora_strength, fused, streamed and under a cache policy; and
removing every LoRA gives back the LoRA-free output bit for bit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from framepack.cache import TeaCache
from framepack.errors import CheckpointError, ConfigError
from framepack.memory.streamer import block_nbytes, minimum_budget
from framepack.models.linear import Linear
from framepack.models.loading import to_checkpoint_state_dict
from framepack.models.transformer import FramePackTransformer
from tests.lora_support import FORMATS, merge, random_checkpoint, save_checkpoint, save_lora, write_lora
from tests.transformer_support import conditioning_and_context, make_inputs, tolerance


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    return random_checkpoint()


@pytest.fixture(scope="module")
def base_folder(checkpoint: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("lora_base"), checkpoint)


@pytest.fixture(scope="module")
def inputs() -> dict:
    return make_inputs(1, [5], seed=3)


def run(model: FramePackTransformer, inputs: dict, cache: object = None) -> torch.Tensor:
    cond, context = conditioning_and_context(inputs)
    return model(inputs["latents"], inputs["timestep"], cond, context, cache=cache)


def merged_output(
    tmp_path: Path, checkpoint: dict, inputs: dict, *loras: tuple[float, list], **kw: object
) -> torch.Tensor:
    folder = save_checkpoint(tmp_path / f"merged_{len(list(tmp_path.iterdir()))}", merge(checkpoint, *loras))
    return run(FramePackTransformer.from_pretrained(folder, **kw), inputs)


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    error = (got - expected).abs().max().item()
    assert error <= tolerance(expected), f"max abs error {error:.3e} > {tolerance(expected):.3e}"


def assert_moved(got: torch.Tensor, base: torch.Tensor) -> None:
    """The LoRA changed the output far beyond the tolerance (so a LoRA left out would be caught)."""
    assert (got - base).abs().max().item() > 1000 * tolerance(base)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_equals_the_hand_merged_checkpoint(
    fmt: str, checkpoint: dict, base_folder: Path, inputs: dict, tmp_path: Path
) -> None:
    tensors, deltas = write_lora(fmt, seed=1)
    path = save_lora(tmp_path / f"{fmt}.safetensors", tensors)
    model = FramePackTransformer.from_pretrained(base_folder)
    base = run(model, inputs)
    saved = to_checkpoint_state_dict(model)
    name = model.add_lora(path, strength=0.7)
    assert to_checkpoint_state_dict(model).keys() == saved.keys()  # the pairs are no part of the checkpoint
    got = run(model, inputs)
    assert_moved(got, base)
    assert_close(got, merged_output(tmp_path, checkpoint, inputs, (0.7, deltas)))
    (entry,) = model.loras()
    assert (entry.name, entry.source, entry.strength, entry.fused) == (fmt, str(path), 0.7, False)
    assert entry.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    model.remove_lora(name)
    assert torch.equal(run(model, inputs), base)
    assert model.loras() == [] and not any(isinstance(m, Linear) and m.lora is not None for m in model.modules())


def test_stacked_strength_remove_and_fuse(checkpoint: dict, base_folder: Path, inputs: dict, tmp_path: Path) -> None:
    a_tensors, a_deltas = write_lora("musubi-framepack", seed=2)
    b_tensors, b_deltas = write_lora("diffusion-pipe", seed=3)
    model = FramePackTransformer.from_pretrained(base_folder)
    base = run(model, inputs)
    a = model.add_lora(save_lora(tmp_path / "a.safetensors", a_tensors), strength=0.5)
    b = model.add_lora(b_tensors, strength=-1.2, name="style")  # a state dict works too
    assert (a, b) == ("a", "style")
    stacked = run(model, inputs)
    assert_close(stacked, merged_output(tmp_path, checkpoint, inputs, (0.5, a_deltas), (-1.2, b_deltas)))

    model.set_lora_strength(a, 1.5)
    changed = run(model, inputs)
    assert_close(changed, merged_output(tmp_path, checkpoint, inputs, (1.5, a_deltas), (-1.2, b_deltas)))
    assert [(e.name, e.strength) for e in model.loras()] == [("a", 1.5), ("style", -1.2)]

    model.remove_lora(b)
    assert_close(run(model, inputs), merged_output(tmp_path, checkpoint, inputs, (1.5, a_deltas)))
    model.remove_lora(a)
    assert torch.equal(run(model, inputs), base)

    model.add_lora(a_tensors, strength=1.5, name="a")
    model.add_lora(b_tensors, strength=-1.2, name="style")
    runtime = run(model, inputs)
    assert torch.equal(runtime, changed)  # adding again in the same order: the same arithmetic
    model.fuse_loras()
    assert not any(isinstance(m, Linear) and m.lora is not None for m in model.modules())
    assert_close(run(model, inputs), runtime)
    assert [(e.name, e.strength, e.fused) for e in model.loras()] == [("a", 1.5, True), ("style", -1.2, True)]
    with pytest.raises(ConfigError, match="fused"):
        model.set_lora_strength("a", 1.0)
    with pytest.raises(ConfigError, match="fused"):
        model.remove_lora("a")


def test_streamed_equals_resident_and_follows_strength(base_folder: Path, inputs: dict) -> None:
    tensors, _ = write_lora("kohya-hunyuanvideo", seed=4)
    resident = FramePackTransformer.from_pretrained(base_folder)
    streamed = FramePackTransformer.from_pretrained(base_folder)
    base = run(resident, inputs)
    sizes = [block_nbytes(b) for b in streamed.streamable_blocks()]
    streamer = streamed.enable_streaming("cpu", minimum_budget(sizes))
    with pytest.raises(ConfigError, match="budget"):  # the LoRA's pairs make the largest block larger
        streamed.add_lora(tensors)
    assert streamed.streamer is not streamer and streamed.streamer.plan == streamer.plan  # as it was
    assert streamed.loras() == [] and not any(isinstance(m, Linear) and m.lora for m in streamed.modules())
    assert torch.equal(run(streamed, inputs), base)
    streamer = streamed.enable_streaming("cpu", minimum_budget(sizes) + 80_000)  # room for the pairs
    assert streamer.plan.streamed
    for model in (resident, streamed):
        model.add_lora(tensors, strength=0.8, name="x")
    restreamed = streamed.streamer
    assert restreamed is not streamer and restreamed.plan.streamed  # set up again, same arguments
    assert block_nbytes(streamed.single_blocks[0]) > sizes[len(streamed.double_blocks)]  # the pairs are counted
    expected = run(resident, inputs)
    assert_moved(expected, base)
    passes = restreamed.stats.passes
    assert torch.equal(run(streamed, inputs), expected)
    assert restreamed.stats.passes > passes

    for model in (resident, streamed):
        model.set_lora_strength("x", -0.3)
    assert streamed.streamer is restreamed  # a strength is no tensor: nothing re-streamed
    assert torch.equal(run(streamed, inputs), run(resident, inputs))

    streamed.unload()
    streamed.remove_lora("x")
    assert not streamed.on_device  # unloaded before, unloaded after
    assert torch.equal(run(streamed, inputs), base)


def test_float16_islands_keep_pairs_in_each_layers_compute_dtype(
    checkpoint: dict, base_folder: Path, inputs: dict, tmp_path: Path
) -> None:
    tensors, deltas = write_lora("diffusers", seed=5)
    half = FramePackTransformer.from_pretrained(base_folder, dtype=torch.float16)
    half.add_lora(tensors, strength=0.9)
    assert half.double_blocks[0].image_qkv.lora.down.dtype == torch.float16
    assert half.proj_out.lora.up_0.dtype == torch.float32  # the float32 output head keeps float32 pairs
    got = run(half, inputs)
    expected = merged_output(tmp_path, checkpoint, inputs, (0.9, deltas))
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    error = (got - expected).abs().max().item()
    assert error <= 5e-3 * max(1.0, expected.abs().max().item())  # tests/test_transformer_fp16.py's bound


def test_teacache_runs_the_lora_model_as_the_merged_one(
    checkpoint: dict, base_folder: Path, inputs: dict, tmp_path: Path
) -> None:
    tensors, deltas = write_lora("kohya-hunyuanvideo", seed=6)  # touches the modulation TeaCache reads
    model = FramePackTransformer.from_pretrained(base_folder)
    model.add_lora(tensors, strength=1.0)
    merged = FramePackTransformer.from_pretrained(
        save_checkpoint(tmp_path / "merged", merge(checkpoint, (1.0, deltas)))
    )
    outputs = []
    for m in (model, merged):
        policy = TeaCache(0.5)
        policy.start_section(3)
        cond, context = conditioning_and_context(inputs)
        prepared = m.prepare(cond, context, inputs["latents"].shape)
        latents, outs = inputs["latents"], []
        for t in (900.0, 880.0, 500.0):
            out = m.denoise(latents, torch.tensor([t]), prepared, cache=policy)
            outs.append(out)
            latents = latents - 0.02 * out
        outputs.append((outs, policy.stats[-1].computed))
    (got, got_computed), (expected, expected_computed) = outputs
    assert got_computed == expected_computed
    for g, e in zip(got, expected):
        assert_close(g, e)


def test_fuse_refuses_float8_weights_and_runs_their_pairs_in_the_compute_dtype(base_folder: Path, inputs: dict) -> None:
    model = FramePackTransformer.from_pretrained(base_folder)
    layer = model.double_blocks[1].image_qkv
    layer.weight = torch.nn.Parameter(layer.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)
    tensors, _ = write_lora("kohya-hunyuanvideo", seed=7)
    model.add_lora(tensors)
    assert layer.lora.down.dtype == torch.float32 and layer.weight.dtype == torch.float8_e4m3fn
    assert torch.isfinite(run(model, inputs)).all()
    with pytest.raises(
        ConfigError, match=r"double_blocks\.1\.image_qkv.*float8.*bfloat16/float32, add the LoRAs, fuse"
    ):
        model.fuse_loras()
    assert layer.lora is not None  # nothing fused


def test_bad_lora_names_the_key_and_leaves_the_model_unchanged(base_folder: Path, inputs: dict, tmp_path: Path) -> None:
    model = FramePackTransformer.from_pretrained(base_folder)
    base = run(model, inputs)
    tensors, _ = write_lora("musubi-framepack", seed=8)
    bad = dict(tensors)
    bad["lora_unet_transformer_blocks_7_attn_to_q.lora_down.weight"] = torch.zeros(4, 32)  # no block 7
    bad["lora_unet_transformer_blocks_7_attn_to_q.lora_up.weight"] = torch.zeros(32, 4)
    path = save_lora(tmp_path / "other_model.safetensors", bad)
    with pytest.raises(CheckpointError, match=r"other_model\.safetensors.*lora_unet_transformer_blocks_7_attn_to_q"):
        model.add_lora(path)
    wide = dict(tensors)
    wide["lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight"] = torch.zeros(4, 48)
    with pytest.raises(CheckpointError, match=r"transformer_blocks_0_attn_to_q.*expected down \[r, 32\].*\[4, 48\]"):
        model.add_lora(wide)
    tall = dict(tensors)
    tall["lora_unet_single_transformer_blocks_1_proj_mlp.lora_up.weight"] = torch.zeros(64, 4)
    with pytest.raises(CheckpointError, match=r"single_transformer_blocks_1_proj_mlp.*up \[128, r\].*\[64, 4\]"):
        model.add_lora(tall)
    assert model.loras() == [] and torch.equal(run(model, inputs), base)
    with pytest.raises(ConfigError, match="no LoRA named 'nope'"):
        model.set_lora_strength("nope", 1.0)
    with pytest.raises(ConfigError, match="strength"):
        model.add_lora(tensors, strength=float("nan"))
    model.add_lora(tensors, name="x")
    with pytest.raises(ConfigError, match="already"):
        model.add_lora(tensors, name="x")
