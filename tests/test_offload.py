"""LayerStreamer: budget arithmetic against hand-worked cases, streamed == resident bit for bit,
byte accounting checked by an independent copy counter, and the device-memory bound."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from framepack.errors import ConfigError
from framepack.memory.streamer import LayerStreamer, block_nbytes, plan_residency, spread_indices

WIDTH = 16
# Hand-worked bytes of one ToyBlock (float32): LayerNorm weight+bias 2*16*4, Linear weight
# 16*16*4 and bias 16*4, buffer 16*4. Packed, each tensor starts on a 256-byte boundary.
RAW_BLOCK_BYTES = 64 + 64 + 1024 + 64 + 64  # 1280
PACKED_BLOCK_BYTES = 256 + 256 + 1024 + 256 + 256  # 2048


class ToyBlock(nn.Module):
    """Transformer-like: pre-norm, linear, GELU, gated residual; ``index`` makes every block differ
    in a non-tensor attribute, so a shared per-structure copy would give wrong outputs."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.norm = nn.LayerNorm(WIDTH)
        self.fc = nn.Linear(WIDTH, WIDTH)
        self.register_buffer("gate", torch.randn(WIDTH))

    def forward(self, x: torch.Tensor, *, shift: float = 0.0) -> torch.Tensor:
        return x + F.gelu(self.fc(self.norm(x))) * self.gate * (1 + 0.1 * self.index) + shift


class WideBlock(nn.Module):
    """A second structure for heterogeneous lists."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(WIDTH, 3 * WIDTH)
        self.down = nn.Linear(3 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor, *, shift: float = 0.0) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(x))) + shift


def random_blocks(n: int, seed: int = 0, kinds: str = "t") -> list[nn.Module]:
    torch.manual_seed(seed)
    blocks = [ToyBlock(i) if kinds[i % len(kinds)] == "t" else WideBlock() for i in range(n)]
    for block in blocks:  # every weight random, LayerNorm's ones/zeros init included
        for p in block.parameters():
            p.data.normal_()
        block.requires_grad_(False)
    return blocks


def run(blocks_iter: object, x: torch.Tensor) -> torch.Tensor:
    for block in blocks_iter:
        x = block(x, shift=0.5)
    return x


class CopyCounter(TorchDispatchMode):
    """Counts bytes written by aten.copy_ (what moving weights into slots costs)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten.copy_.default:
            self.bytes += args[0].nbytes
        return func(*args, **(kwargs or {}))


# --- plan_residency: hand-worked cases ---------------------------------------------------


def test_spread_indices_hand_worked() -> None:
    assert spread_indices(4, 10) == (2, 4, 7, 9)
    assert spread_indices(3, 4) == (1, 2, 3)
    assert spread_indices(1, 5) == (4,)
    assert spread_indices(0, 3) == ()


@pytest.mark.parametrize(
    ("budget", "prefetch", "streamed", "device_bytes"),
    [
        (None, 1, (), 600),
        (600, 1, (), 600),
        # 599: streaming 1 or 2 saves nothing (2 slots of 100); 3 streamed -> 300 + 2*100
        (599, 1, (1, 3, 5), 500),
        (200, 1, (0, 1, 2, 3, 4, 5), 200),
        (100, 0, (0, 1, 2, 3, 4, 5), 100),
        # prefetch 2 -> 3 slots: 5 streamed -> 100 + 3*100 = 400 <= 450
        (450, 2, (1, 2, 3, 4, 5), 400),
        (300, 2, (0, 1, 2, 3, 4, 5), 300),
    ],
)
def test_plan_residency_uniform(
    budget: int | None, prefetch: int, streamed: tuple[int, ...], device_bytes: int
) -> None:
    plan = plan_residency([100] * 6, budget, prefetch)
    assert plan.streamed == streamed
    assert plan.resident == tuple(i for i in range(6) if i not in streamed)
    assert plan.device_bytes == device_bytes
    assert str(plan).startswith("6 blocks:")


def test_plan_residency_heterogeneous() -> None:
    # budget 500 of [300,100,100,100]: 1 streamed (3): 500+100; 2 streamed (1,3): 400+2*100;
    # 3 streamed (1,2,3): 300 + 2*100 = 500 fits.
    plan = plan_residency([300, 100, 100, 100], 500, 1)
    assert plan.streamed == (1, 2, 3) and plan.resident == (0,)
    assert plan.slots == 2 and plan.slot_bytes == 100 and plan.device_bytes == 500


@pytest.mark.parametrize(
    ("sizes", "budget", "prefetch", "needle"),
    [
        ([100] * 6, 199, 1, "smallest budget is 200 bytes"),
        ([100] * 6, 99, 0, "smallest budget is 100 bytes"),
        ([100] * 6, -1, 1, "budget_bytes must be >= 0"),
        ([100] * 6, 500, -1, "prefetch must be an integer >= 0"),
        ([100, -5], 500, 1, "block sizes must be >= 0"),
    ],
)
def test_plan_residency_rejects_impossible_budgets(sizes: list[int], budget: int, prefetch: int, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        plan_residency(sizes, budget, prefetch)


# --- LayerStreamer on the CPU "device" ---------------------------------------------------


def test_block_nbytes_is_the_packed_size() -> None:
    assert block_nbytes(random_blocks(1)[0]) == PACKED_BLOCK_BYTES


BUDGETS = {
    "all_resident": None,
    "half": 3 * PACKED_BLOCK_BYTES,
    "minimum": 2 * PACKED_BLOCK_BYTES,
}


@pytest.mark.parametrize("budget_name", list(BUDGETS))
def test_streamed_equals_resident_bit_for_bit(budget_name: str) -> None:
    blocks = random_blocks(6)
    reference = copy.deepcopy(blocks)
    x = torch.randn(2, 5, WIDTH)
    expected = run(reference, x)

    streamer = LayerStreamer(blocks, "cpu", BUDGETS[budget_name], prefetch=1)
    for _ in range(2):  # the second pass reuses slots that held other blocks
        assert torch.equal(run(streamer.iterate(0, 6), x), expected)
    # split passes, as a cache policy runs block 0 then the rest
    y = run(streamer.iterate(0, 1), x)
    assert torch.equal(run(streamer.iterate(1, 6), y), expected)


@pytest.mark.parametrize(
    ("budget", "n_streamed"), [(None, 0), (3 * PACKED_BLOCK_BYTES, 5), (2 * PACKED_BLOCK_BYTES, 6)]
)
def test_bytes_moved_and_device_bound(budget: int | None, n_streamed: int) -> None:
    # 6 blocks of 2048 packed bytes; budget 6144 = 1 resident + 2 slots -> 5 streamed.
    blocks = random_blocks(6)
    streamer = LayerStreamer(blocks, "cpu", budget, prefetch=1)
    assert len(streamer.plan.streamed) == n_streamed
    x = torch.randn(3, WIDTH)
    storages: dict[int, int] = {}
    with CopyCounter() as counter:
        for block in streamer.iterate():
            for t in [*block.parameters(), *block.buffers()]:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            x = block(x)
    assert counter.bytes == n_streamed * RAW_BLOCK_BYTES
    assert streamer.stats.last_pass_transferred_bytes == n_streamed * PACKED_BLOCK_BYTES
    # everything the yielded blocks computed with, measured from the real storages
    if budget is not None:
        assert sum(storages.values()) <= budget
        assert streamer.stats.peak_in_flight_bytes <= 2 * PACKED_BLOCK_BYTES
        assert streamer.stats.device_bytes <= budget


def test_prefetch_depth_sets_slots_and_shells_never_alias_in_flight() -> None:
    blocks = random_blocks(8)
    streamer = LayerStreamer(blocks, "cpu", 3 * PACKED_BLOCK_BYTES, prefetch=2)
    assert streamer.plan.slots == 3 and streamer.plan.resident == ()
    seen = []
    x = torch.randn(4, WIDTH)
    for block in streamer.iterate():
        seen.append(block.fc.weight.untyped_storage().data_ptr())
        x = block(x)
    assert len(set(seen)) == 3
    # three consecutive blocks are in three different slots (one computing, two loading)
    assert all(len({seen[i], seen[i + 1], seen[i + 2]}) == 3 for i in range(len(seen) - 2))


def test_heterogeneous_blocks_share_slots() -> None:
    blocks = random_blocks(6, kinds="tw")
    reference = copy.deepcopy(blocks)
    x = torch.randn(2, WIDTH)
    sizes = [block_nbytes(b) for b in blocks]
    streamer = LayerStreamer(blocks, "cpu", 2 * max(sizes), prefetch=1)
    assert streamer.plan.streamed == tuple(range(6))
    assert torch.equal(run(streamer.iterate(), x), run(reference, x))


def test_early_exit_then_full_pass_and_unload_reload() -> None:
    blocks = random_blocks(6)
    reference = copy.deepcopy(blocks)
    host_weight = blocks[0].fc.weight
    x = torch.randn(2, WIDTH)
    streamer = LayerStreamer(blocks, "cpu", 3 * PACKED_BLOCK_BYTES)
    for i, _block in enumerate(streamer.iterate()):
        if i == 2:
            break
    assert torch.equal(run(streamer.iterate(), x), run(reference, x))
    streamer.unload()
    assert streamer.stats.device_bytes == 0
    assert blocks[0].fc.weight.data_ptr() == host_weight.data_ptr()  # back on its own host tensor, no copy
    assert torch.equal(run(streamer.iterate(), x), run(reference, x))


def test_bad_inputs_raise() -> None:
    with torch.device("meta"):
        meta_blocks = [ToyBlock(0)]
    with pytest.raises(ConfigError, match="meta tensors"):
        LayerStreamer(meta_blocks, "cpu", None)
    streamer = LayerStreamer(random_blocks(3), "cpu", None)
    with pytest.raises(ConfigError, match=r"iterate\(1, 4\) is outside the 3 blocks"):
        next(streamer.iterate(1, 4))
    with pytest.raises(ConfigError, match="smallest budget"):
        LayerStreamer(random_blocks(3), "cpu", PACKED_BLOCK_BYTES)


def test_packed_host_path_matches_and_copies_one_buffer_per_block() -> None:
    blocks = random_blocks(6)
    reference = copy.deepcopy(blocks)
    x = torch.randn(2, WIDTH)
    streamer = LayerStreamer(blocks, "cpu", 2 * PACKED_BLOCK_BYTES, pin_memory=True)
    storages = set()
    with CopyCounter() as counter:
        out = x
        for block in streamer.iterate():
            storages.add(block.fc.weight.untyped_storage().data_ptr())
            out = block(out, shift=0.5)
    assert torch.equal(out, run(reference, x))
    assert len(storages) == 2  # every streamed block ran from one of the two slots
    assert counter.bytes == 6 * PACKED_BLOCK_BYTES  # one packed copy per streamed block
    # the streamed blocks themselves now live in their packed host buffers
    first = blocks[0].norm.weight.untyped_storage()
    assert first.nbytes() == PACKED_BLOCK_BYTES and blocks[0].gate.untyped_storage().data_ptr() == first.data_ptr()


class TiedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(WIDTH, WIDTH, bias=False)
        self.b = nn.Linear(WIDTH, WIDTH, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor, *, shift: float = 0.0) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))) + shift


def test_tied_weights_stay_tied_and_are_copied_once() -> None:
    torch.manual_seed(1)
    blocks = [TiedBlock().requires_grad_(False) for _ in range(4)]
    reference = copy.deepcopy(blocks)
    size = block_nbytes(blocks[0])
    assert size == WIDTH * WIDTH * 4  # one 1024-byte weight
    streamer = LayerStreamer(blocks, "cpu", 2 * size, pin_memory=True)
    x = torch.randn(2, WIDTH)
    for block in streamer.iterate():
        assert block.a.weight is block.b.weight
    assert torch.equal(run(streamer.iterate(), x), run(reference, x))
    assert blocks[0].a.weight is blocks[0].b.weight
