"""Streamed blocks of a memory-mapped model give their file pages back after each copy
(framepack.memory.mapped_pages), and compute_in runs float32 from narrower stored Linears."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from framepack.memory import mapped_pages
from framepack.memory.streamer import block_nbytes, minimum_budget
from framepack.models.linear import Linear
from framepack.models.loading import to_checkpoint_state_dict
from framepack.models.stored_linears import compute_in
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from tests.transformer_support import TINY, conditioning_and_context, make_inputs, randomise_

linux_only = pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")

# Wide enough that block weights span many pages (a 64x256 float32 Linear is 64 KiB).
CONFIG = {**TINY, "attention_head_dim": 64, "rope_axes_dim": (16, 24, 24)}


def save_model(folder: Path, dtype: torch.dtype = torch.float32) -> Path:
    model = FramePackTransformer(TransformerConfig(**CONFIG)).eval()
    randomise_(model, seed=3)
    tensors = {k: v.to(dtype).contiguous() for k, v in to_checkpoint_state_dict(model).items()}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "diffusion_pytorch_model.safetensors"
    save_file(tensors, path)
    (folder / "config.json").write_text(json.dumps(TransformerConfig(**CONFIG).to_dict()))
    return path


def file_rss_bytes(path: Path) -> int:
    """Resident bytes of every mapping of ``path`` in this process (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            inside = len(fields) == 6 and fields[5] == str(path.resolve())
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def run(model: FramePackTransformer) -> torch.Tensor:
    inputs = make_inputs(1, [7], frames=3, height=8, width=12)
    cond, context = conditioning_and_context(inputs)
    with torch.no_grad():
        return model(inputs["latents"], inputs["timestep"], cond, context)


@linux_only
def test_streamed_pass_releases_file_pages_and_rereads_them_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_model(tmp_path)
    model = FramePackTransformer.from_pretrained(tmp_path, dtype=torch.float32, storage="mmap")
    # Loading read the fused parts (q|k|v... are concatenated into anonymous memory) and then dropped their pages.
    assert file_rss_bytes(path) <= 0.1 * path.stat().st_size
    resident = run(model)
    sizes = [block_nbytes(b) for b in model.streamable_blocks()]
    streamer = model.enable_streaming("cpu", minimum_budget(sizes))
    assert streamer.plan.streamed == tuple(range(len(sizes)))
    with monkeypatch.context() as patch:  # the control: the same streamed pass, nothing released
        patch.setattr(mapped_pages, "release", lambda tensors: 0)
        control = run(model)
    # The file-backed part of the blocks: tensors not fused at load (fused ones are anonymous copies).
    path_str = str(path.resolve())
    mapped_block_bytes = sum(
        t.nbytes
        for block in model.streamable_blocks()
        for t in block.state_dict().values()
        if t.nbytes >= 16 * mapped_pages.PAGE and _in_file(t, path_str)
    )
    assert mapped_block_bytes > 0.25 * path.stat().st_size
    mapped_before = file_rss_bytes(path)  # the control pass mapped every block page in
    assert mapped_before >= mapped_block_bytes

    first = run(model)
    released = streamer.stats.released_bytes
    assert released >= 0.8 * mapped_block_bytes
    mapped_after = file_rss_bytes(path)
    assert mapped_before - mapped_after >= 0.8 * mapped_block_bytes, (mapped_before, mapped_after)

    second = run(model)  # the released pages are read again from the file
    assert torch.equal(first, control) and torch.equal(second, control)
    assert streamer.stats.released_bytes - released >= 0.8 * mapped_block_bytes
    # Slots align tensors differently from the file, so vectorised kernels may round differently.
    torch.testing.assert_close(second, resident, rtol=1e-5, atol=1e-5)


def _in_file(tensor: torch.Tensor, path: str) -> bool:
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == path:
            low, high = (int(v, 16) for v in fields[0].split("-"))
            if low <= address < high:
                return True
    return False


@linux_only
def test_release_never_touches_anonymous_or_written_memory(tmp_path: Path) -> None:
    save_model(tmp_path)
    model = FramePackTransformer.from_pretrained(tmp_path, dtype=torch.float32, storage="mmap")
    weight = model.single_blocks[0].proj_out.weight  # mapped
    fused = model.single_blocks[0].qkv_mlp.weight  # concatenated at load: anonymous
    copy = weight.clone()
    fused_copy = fused.clone()
    assert mapped_pages.release([fused, copy]) == 0
    assert torch.equal(fused, fused_copy) and torch.equal(copy, weight)

    edited = weight.clone()
    edited[5, 7] += 1.0
    weight.data[5, 7] += 1.0  # a write makes that page a private, anonymous copy
    weight.sum()  # every other page of the tensor mapped in
    released = mapped_pages.release([weight])
    assert weight.nbytes - 3 * mapped_pages.PAGE <= released <= weight.nbytes - mapped_pages.PAGE
    assert torch.equal(weight, edited)  # the written page was kept, the others read back from the file
    assert torch.equal(model.single_blocks[0].proj_out.weight.flatten()[-10:], edited.flatten()[-10:])


def test_compute_in_float32_keeps_stored_linear_weights_and_matches_a_float32_copy(tmp_path: Path) -> None:
    save_model(tmp_path, dtype=torch.bfloat16)
    # Reference: every tensor upcast to float32 by the loader (bf16 -> float32 is exact).
    reference = FramePackTransformer.from_pretrained(tmp_path, dtype=torch.float32, storage="copy")
    model = FramePackTransformer.from_pretrained(tmp_path, dtype=torch.bfloat16, storage="mmap")
    weight = model.single_blocks[0].proj_out.weight
    pointer = weight.data_ptr()
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, Linear)}
    others = sum(
        t.numel()
        for t in model.state_dict(keep_vars=True).values()
        if id(t) not in linear_weights and t.dtype == torch.bfloat16
    )
    allocated = compute_in(model, torch.float32)
    assert allocated == 4 * others
    assert model.single_blocks[0].proj_out.weight.data_ptr() == pointer  # still the mapped bf16 bytes
    assert model.single_blocks[0].proj_out.weight.dtype == torch.bfloat16
    assert model.single_blocks[0].proj_out.bias.dtype == torch.float32
    assert model.patch_embed.proj.weight.dtype == torch.float32 and model.dtype == torch.float32
    expected, got = run(reference), run(model)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
