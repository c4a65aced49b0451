"""Host memory of streaming: page-locked bytes are exactly the packed blocks (or two staging
buffers), the RAM check falls back or refuses, every staging buffer is rewritten only after
the copy that last read it, shells survive unload/load, and ComponentResidency pins and
uploads. Streamed output equals resident output bit for bit throughout."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from framepack.device_runtime import DeviceRuntime, use_runtime
from framepack.errors import ConfigError
from framepack.memory import host as host_memory
from framepack.memory.residency import ComponentResidency, ModuleTensors
from framepack.memory.streamer import LayerStreamer, block_nbytes
from tests.test_offload import PACKED_BLOCK_BYTES, RAW_BLOCK_BYTES, WIDTH, CopyCounter, random_blocks, run

# Hand-worked packed bytes of one WideBlock (float32, each tensor on a 256-byte boundary):
# up.weight 48x16x4 = 3072, up.bias 48x4 = 192 -> 256, down.weight 16x48x4 = 3072, down.bias 64 -> 256.
PACKED_WIDE_BYTES = 3072 + 256 + 3072 + 256  # 6656: no power of two


class RecordingRuntime(DeviceRuntime):
    """The CPU runtime, recording what a CUDA run would ask of the driver. Events are
    numbered tokens, so the order of recording and waiting can be checked."""

    def __init__(self) -> None:
        self.pinned: list[int] = []
        self.empty_cache_calls = 0
        self.log: list[tuple[str, Any]] = []
        self._events = 0

    def pinned_empty(self, nbytes: int) -> torch.Tensor:
        self.pinned.append(nbytes)
        return super().pinned_empty(nbytes)

    def record_event(self, stream: Any) -> Any:
        self._events += 1
        self.log.append(("record", self._events))
        return self._events

    def synchronize_event(self, event: Any) -> None:
        self.log.append(("sync", event))

    def empty_cache(self) -> None:
        self.empty_cache_calls += 1


def fake_meminfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, available_bytes: int) -> None:
    path = tmp_path / "meminfo"
    path.write_text(
        f"MemTotal:       65536000 kB\nMemFree:         1000 kB\nMemAvailable:   {available_bytes // 1024} kB\n"
    )
    monkeypatch.setattr(host_memory, "MEMINFO", path)


def test_meminfo_is_read_in_bytes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_meminfo(monkeypatch, tmp_path, 5 << 30)
    assert host_memory.available_host_bytes() == 5 << 30
    assert host_memory.lockable_bytes() == (5 << 30) - host_memory.LOCK_MARGIN_BYTES
    monkeypatch.setattr(host_memory, "MEMINFO", tmp_path / "absent")
    assert host_memory.available_host_bytes() is None and host_memory.lockable_bytes() is None


def test_pinned_staging_locks_exactly_the_packed_streamed_blocks() -> None:
    blocks = random_blocks(6, kinds="tw")
    reference = copy.deepcopy(blocks)
    assert [block_nbytes(b) for b in blocks[:2]] == [PACKED_BLOCK_BYTES, PACKED_WIDE_BYTES]
    x = torch.randn(2, WIDTH)
    with use_runtime(RecordingRuntime()) as rt:
        # 2 slots of the wide block (13312) + one small block resident: blocks 1..5 stream.
        streamer = LayerStreamer(blocks, "cpu", PACKED_BLOCK_BYTES + 2 * PACKED_WIDE_BYTES, pin_memory=True)
        assert streamer.plan.streamed == (1, 2, 3, 4, 5) and streamer.staging == "pinned"
        # One exact-size page-locked buffer per streamed block, nothing rounded up.
        assert rt.pinned == [
            PACKED_WIDE_BYTES,
            PACKED_BLOCK_BYTES,
            PACKED_WIDE_BYTES,
            PACKED_BLOCK_BYTES,
            PACKED_WIDE_BYTES,
        ]
        assert streamer.stats.pinned_bytes == sum(rt.pinned) == 3 * PACKED_WIDE_BYTES + 2 * PACKED_BLOCK_BYTES
        with CopyCounter() as counter:
            out = run(streamer.iterate(), x)
    assert torch.equal(out, run(reference, x))
    assert counter.bytes == sum(rt.pinned)  # one packed copy per streamed block, from its pinned buffer


def test_ring_staging_locks_two_slot_buffers_and_leaves_the_blocks_where_they_are() -> None:
    blocks = random_blocks(6, kinds="tw")
    reference = copy.deepcopy(blocks)
    host = [b.up.weight if hasattr(b, "up") else b.fc.weight for b in blocks]
    x = torch.randn(2, WIDTH)
    with use_runtime(RecordingRuntime()) as rt:
        streamer = LayerStreamer(blocks, "cpu", 2 * PACKED_WIDE_BYTES, pin_memory=True, staging="ring")
        assert streamer.plan.streamed == tuple(range(6)) and streamer.staging == "ring"
        assert rt.pinned == [PACKED_WIDE_BYTES, PACKED_WIDE_BYTES]  # two staging buffers of one slot
        for _ in range(2):
            with CopyCounter() as counter:
                assert torch.equal(run(streamer.iterate(), x), run(reference, x))
            # host -> staging per tensor (raw bytes), staging -> slot in one packed copy
            assert counter.bytes == 3 * (RAW_BLOCK_BYTES + 6400) + 3 * (PACKED_BLOCK_BYTES + PACKED_WIDE_BYTES)
    # The blocks still compute from their own tensors (a memory-mapped file stays mapped).
    assert all(
        (b.up.weight if hasattr(b, "up") else b.fc.weight).data_ptr() == h.data_ptr() for b, h in zip(blocks, host)
    )
    # Every staging fill waited for the copy that last read that buffer: the transfer two before.
    transfers: list[tuple[Any, Any]] = []  # (event waited on, event marking this copy done)
    for n, (kind, token) in enumerate(rt.log):
        if kind == "sync":
            transfers.append((token, next(t for k, t in rt.log[n + 1 :] if k == "record")))
    assert len(transfers) == 12
    assert [waited for waited, _ in transfers] == [None, None] + [done for _, done in transfers[:-2]]


def test_pinning_more_than_the_host_can_lock_falls_back_to_the_ring(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocks = random_blocks(6)
    reference = copy.deepcopy(blocks)
    x = torch.randn(2, WIDTH)
    # 6 streamed blocks need 12 KiB locked; the ring 4 KiB; 10 KiB can be locked.
    fake_meminfo(monkeypatch, tmp_path, host_memory.LOCK_MARGIN_BYTES + 10 * 1024)
    with use_runtime(RecordingRuntime()) as rt, caplog.at_level(logging.WARNING, logger="framepack"):
        streamer = LayerStreamer(blocks, "cpu", 2 * PACKED_BLOCK_BYTES, pin_memory=True)
        assert torch.equal(run(streamer.iterate(), x), run(reference, x))
    assert streamer.staging == "ring" and rt.pinned == [PACKED_BLOCK_BYTES] * 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "needs 12.00 KiB but only 10.00 KiB" in warnings[0]

    fake_meminfo(monkeypatch, tmp_path, host_memory.LOCK_MARGIN_BYTES + 1024)
    with pytest.raises(ConfigError, match=r"needs 4\.00 KiB of page-locked.*only 1\.00 KiB.*pin_memory=False"):
        LayerStreamer(random_blocks(6), "cpu", 2 * PACKED_BLOCK_BYTES, pin_memory=True)
    # Without page-locking nothing is checked or locked.
    with use_runtime(RecordingRuntime()) as rt:
        assert LayerStreamer(random_blocks(6), "cpu", 2 * PACKED_BLOCK_BYTES, pin_memory=False).staging is None
    assert rt.pinned == []


@pytest.mark.parametrize("staging", ["pinned", "ring"])
def test_unload_keeps_the_shells_and_load_repoints_them(staging: str) -> None:
    blocks = random_blocks(6)
    reference = copy.deepcopy(blocks)
    x = torch.randn(2, WIDTH)
    with use_runtime(RecordingRuntime()) as rt:
        streamer = LayerStreamer(blocks, "cpu", 3 * PACKED_BLOCK_BYTES, pin_memory=True, staging=staging)
        first = list(streamer.iterate())
        streamer.unload()
        streamer.unload()  # already unloaded: nothing to do
        assert rt.empty_cache_calls == 1 and not streamer.on_device and streamer.stats.device_bytes == 0
        # Offloaded shells hold no slot memory: they point at their blocks' host tensors.
        for i in streamer.plan.streamed:
            assert first[i].fc.weight.data_ptr() == blocks[i].fc.weight.data_ptr()
        streamer.load()
        assert streamer.on_device and streamer.stats.device_bytes == 3 * PACKED_BLOCK_BYTES
        second = list(streamer.iterate())
        assert all(a is b for a, b in zip(first, second))  # the same shell objects, not rebuilt
        assert torch.equal(run(streamer.iterate(), x), run(reference, x))
        slots = {b.fc.weight.untyped_storage().data_ptr() for i, b in enumerate(second) if i in streamer.plan.streamed}
        assert len(slots) == 2  # pointed at the two new slots


class ToCopies(TorchDispatchMode):
    """Records the ``non_blocking`` flag of every device copy."""

    def __init__(self) -> None:
        super().__init__()
        self.non_blocking: list[bool] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten._to_copy.default:
            self.non_blocking.append(bool((kwargs or {}).get("non_blocking", False)))
        return func(*args, **(kwargs or {}))


def test_component_residency_pins_exactly_and_uploads_without_blocking() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(WIDTH, 3 * WIDTH), nn.LayerNorm(3 * WIDTH)).requires_grad_(False)
    values = [t.clone() for t in model.state_dict().values()]
    with use_runtime(RecordingRuntime()) as rt:
        residency = ComponentResidency(model, "meta", pin_memory=True)  # meta stands in for an accelerator
        assert rt.pinned == [ModuleTensors(model).packed_nbytes] == [3072 + 256 + 256 + 256]
        assert residency.pinned_bytes == 3840
        # The module now computes from the page-locked copies (one buffer), with the same values.
        assert len({t.untyped_storage().data_ptr() for t in model.state_dict().values()}) == 1
        assert model[0].weight.untyped_storage().nbytes() == 3840
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), values))
        with ToCopies() as copies:
            residency.load()
            residency.load()  # already there: nothing copied
        assert residency.on_device and copies.non_blocking == [True] * 4 and model[1].bias.is_meta
        residency.unload()
        residency.unload()
        assert not residency.on_device and rt.empty_cache_calls == 1
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), values))


def test_component_residency_does_not_pin_what_the_host_cannot_lock(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_meminfo(monkeypatch, tmp_path, host_memory.LOCK_MARGIN_BYTES + 1024)
    model = nn.Linear(WIDTH, 3 * WIDTH)
    weight = model.weight
    with use_runtime(RecordingRuntime()) as rt, caplog.at_level(logging.WARNING, logger="framepack"):
        residency = ComponentResidency(model, "cpu", pin_memory=True)
    assert rt.pinned == [] and residency.pinned_bytes == 0 and model.weight is weight
    assert "not page-locking 3.25 KiB of Linear" in caplog.text
