"""Streaming on the real models: the transformer and the Llama encoder streamed through a
LayerStreamer give the resident model's output bit for bit, at every budget, with and
without cache policies that split the stack; the blocks never hold more than the budget."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import pytest
import torch
from torch import nn

from framepack.cache import FirstBlockCache, NoCache, TeaCache
from framepack.cache.base import CachePolicy
from framepack.device_runtime import use_runtime
from framepack.errors import ConfigError
from framepack.memory.streamer import block_nbytes, minimum_budget
from framepack.models.llama import LlamaConfig, LlamaTextEncoder
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from tests.encoder_fixtures import randomize
from tests.test_streamer_host_memory import RecordingRuntime
from tests.transformer_support import conditioning_and_context, make_inputs, randomise_

BUDGETS: dict[str, Callable[[list[int]], int | None]] = {
    "all_resident": lambda sizes: None,
    "half": lambda sizes: sum(sizes) // 2,
    "minimum": lambda sizes: minimum_budget(sizes, 1),
}


def storage_recorder(blocks: list[nn.Module]) -> dict[int, int]:
    """Storage bytes of every tensor the blocks compute with, recorded as they are called.
    Streamed blocks run as copies (shells) that inherit the hooks registered here."""
    seen: dict[int, int] = {}

    def record(module: nn.Module, args: object) -> None:
        for t in [*module.parameters(), *module.buffers()]:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    for block in blocks:
        block.register_forward_pre_hook(record)
    return seen


# --- the transformer -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformer() -> FramePackTransformer:
    torch.manual_seed(0)
    config = TransformerConfig.preset("tiny", num_layers=3, num_single_layers=4)
    model = FramePackTransformer(config).eval()
    randomise_(model, 11)
    return model


@pytest.fixture(scope="module")
def step_inputs() -> dict:
    return make_inputs(1, [5], seed=3)  # inverted layout: 1x, 2x and 4x clean groups


def denoise_steps(model: FramePackTransformer, inputs: dict, policy: CachePolicy | None) -> list[torch.Tensor]:
    """Three denoising calls of one section, as a sampler makes them."""
    cond, context = conditioning_and_context(inputs)
    prepared = model.prepare(cond, context, inputs["latents"].shape)
    if policy is not None:
        policy.start_section(3)
    latents, outs = inputs["latents"], []
    for t in (900.0, 880.0, 500.0):
        out = model.denoise(latents, torch.tensor([t]), prepared, cache=policy)
        outs.append(out)
        latents = latents - 0.02 * out
    return outs


POLICIES: dict[str, Callable[[], CachePolicy | None]] = {
    "none": lambda: None,
    "nocache": NoCache,
    "teacache": lambda: TeaCache(0.5),  # modulated input of block 0 before the stack
    "first_block": lambda: FirstBlockCache(0.5),  # run_first, then run_rest: two passes
}


@pytest.mark.parametrize("policy_name", list(POLICIES))
@pytest.mark.parametrize("budget_name", list(BUDGETS))
def test_streamed_transformer_equals_resident(
    transformer: FramePackTransformer, step_inputs: dict, budget_name: str, policy_name: str
) -> None:
    expected_policy = POLICIES[policy_name]()
    expected = denoise_steps(transformer, step_inputs, expected_policy)
    streamed = copy.deepcopy(transformer)
    sizes = [block_nbytes(b) for b in streamed.streamable_blocks()]
    streamer = streamed.enable_streaming("cpu", BUDGETS[budget_name](sizes), prefetch=1)
    if budget_name != "all_resident":
        assert streamer.plan.streamed, "the budget must make some blocks stream"
    policy = POLICIES[policy_name]()
    got = denoise_steps(streamed, step_inputs, policy)
    assert streamer.stats.passes >= 3  # the blocks really came through the streamer
    for step, (g, e) in enumerate(zip(got, expected)):
        assert torch.equal(g, e), f"step {step} differs"
    if policy is not None:
        assert policy.stats[-1].computed == expected_policy.stats[-1].computed  # same decisions
    if policy_name == "first_block":
        assert policy.stats[-1].skipped_count >= 1, "the policy must exercise its skip path"


def test_transformer_blocks_never_exceed_the_budget(transformer: FramePackTransformer, step_inputs: dict) -> None:
    streamed = copy.deepcopy(transformer)
    blocks = list(streamed.streamable_blocks())
    sizes = [block_nbytes(b) for b in blocks]
    # Hand-sized budget: 3 blocks' worth of the 7 -> some resident, most streamed through 2 slots.
    budget = 3 * max(sizes)
    seen = storage_recorder(blocks)
    streamer = streamed.enable_streaming("cpu", budget)
    assert 0 < len(streamer.plan.streamed) < len(blocks)
    denoise_steps(streamed, step_inputs, TeaCache(0.0))
    # What the blocks computed with, measured from their storages, fits the budget ...
    assert sum(seen.values()) <= budget
    # ... and so does the streamer's own accounting; every streamed block moved once per pass.
    stats = streamer.stats
    assert stats.device_bytes <= budget
    assert stats.peak_in_flight_bytes <= streamer.plan.slots * max(sizes)
    assert stats.passes == 3 * 2  # TeaCache fetches block 0 for its decision, then runs the stack
    streamed_bytes = sum(sizes[i] for i in streamer.plan.streamed)
    assert stats.last_pass_transferred_bytes == streamed_bytes


def test_one_streamer_over_double_and_single_blocks(transformer: FramePackTransformer) -> None:
    streamed = copy.deepcopy(transformer)
    doubles, singles = list(streamed.double_blocks), list(streamed.single_blocks)
    assert block_nbytes(doubles[0]) > block_nbytes(singles[0])  # heterogeneous: slots fit the larger kind
    streamer = streamed.enable_streaming("cpu", minimum_budget([block_nbytes(b) for b in doubles + singles]))
    assert streamer.blocks == doubles + singles
    assert streamer.plan.slot_bytes == block_nbytes(doubles[0])


def test_enable_disable_unload_and_errors(transformer: FramePackTransformer, step_inputs: dict) -> None:
    model = copy.deepcopy(transformer)
    host = {name: p.data_ptr() for name, p in model.named_parameters()}
    expected = denoise_steps(model, step_inputs, None)[0]
    with pytest.raises(ConfigError, match=r"unload\(\) needs enable_streaming"):
        model.unload()
    with pytest.raises(ConfigError, match="smallest budget"):
        model.enable_streaming("cpu", 1)
    assert model.streamer is None  # a refused budget leaves the model as it was

    model.enable_streaming("cpu", minimum_budget([block_nbytes(b) for b in model.streamable_blocks()]))
    model.unload()
    assert model.streamer.stats.device_bytes == 0
    model.load()
    assert torch.equal(denoise_steps(model, step_inputs, None)[0], expected)
    model.disable_streaming()
    assert model.streamer is None
    # Resident blocks and non-block weights are back on their own host tensors (no copy on CPU).
    moved = [n for n, p in model.named_parameters() if p.data_ptr() != host[n] and "blocks" not in n]
    assert moved == []
    assert torch.equal(denoise_steps(model, step_inputs, None)[0], expected)


def test_streaming_sizes_split_blocks_from_the_rest(transformer: FramePackTransformer) -> None:
    sizes = transformer.streaming_sizes()
    config = transformer.config
    d, m = config.inner_dim, config.mlp_dim

    # Hand count of one single block (float32): modulation 3d x d + 3d, qkv_mlp (3d+m) x d + (3d+m),
    # the q/k RMSNorm weights 2*hd, proj_out d x (d+m) + d; each tensor padded to 256 bytes.
    def padded(n: int) -> int:
        return -(-4 * n // 256) * 256

    hd = config.attention_head_dim
    single = (
        padded(3 * d * d)
        + padded(3 * d)
        + padded((3 * d + m) * d)
        + padded(3 * d + m)
        + padded(2 * hd)
        + padded(d * (d + m))
        + padded(d)
    )
    assert sizes.block_bytes[config.num_layers :] == (single,) * config.num_single_layers
    every = sum(p.nbytes for p in transformer.parameters())
    blocks_raw = sum(p.nbytes for b in transformer.streamable_blocks() for p in b.parameters())
    assert sizes.fixed_bytes == every - blocks_raw


# --- the Llama encoder -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama() -> LlamaTextEncoder:
    config = dataclasses.replace(LlamaConfig.preset("tiny"), num_hidden_layers=6, vocab_size=512)
    torch.manual_seed(0)
    return randomize(LlamaTextEncoder(config), 4)


def llama_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 512, (2, 13), generator=g)
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 9:] = 0
    return ids, mask


@pytest.mark.parametrize("budget_name", list(BUDGETS))
def test_streamed_llama_equals_resident(llama: LlamaTextEncoder, budget_name: str) -> None:
    ids, mask = llama_inputs()
    with torch.no_grad():
        expected = llama(ids, mask, hidden_state_index=-3)
    streamed = copy.deepcopy(llama)
    needed = streamed.layers_needed(-3)
    assert needed == 4  # 6 layers; hidden_states[-3] is the output of layer 3
    layers = list(streamed.layers)
    seen = storage_recorder(layers)
    sizes = [block_nbytes(b) for b in layers[:needed]]
    budget = BUDGETS[budget_name](sizes)
    streamer = streamed.enable_streaming("cpu", budget, num_blocks=needed)
    assert streamer.blocks == layers[:needed]
    for _ in range(2):  # the second pass reuses slots that held other layers
        with torch.no_grad():
            assert torch.equal(streamed(ids, mask, hidden_state_index=-3), expected)
    assert streamer.stats.passes == 2
    if budget is not None:
        assert streamer.plan.streamed
        assert sum(seen.values()) <= budget and streamer.stats.device_bytes <= budget
    with pytest.raises(ConfigError, match="streaming was enabled for the first 4 layers"):
        streamed(ids, mask, hidden_state_index=-1)
    assert streamed.streaming_sizes(needed).block_bytes == tuple(sizes)


def test_llama_streaming_every_layer_reaches_the_final_norm(llama: LlamaTextEncoder) -> None:
    ids, mask = llama_inputs()
    with torch.no_grad():
        expected = llama(ids, mask, hidden_state_index=-1)
        streamed = copy.deepcopy(llama)
        sizes = [block_nbytes(b) for b in streamed.layers]
        streamed.enable_streaming("cpu", minimum_budget(sizes))
        assert torch.equal(streamed(ids, mask, hidden_state_index=-1), expected)
    with pytest.raises(ConfigError, match=r"num_blocks must be in \[0, 6\]"):
        streamed.enable_streaming("cpu", None, num_blocks=7)


def test_llama_embedding_stays_on_the_host_and_out_of_the_fixed_bytes(llama: LlamaTextEncoder) -> None:
    ids, mask = llama_inputs()
    with torch.no_grad():
        expected = llama(ids, mask, hidden_state_index=-3)
    # Hand count: the only non-block weight besides the table is the final norm, 32 floats.
    assert llama.streaming_sizes(4).fixed_bytes == 32 * 4
    streamed = copy.deepcopy(llama)
    table, norm = streamed.embed_tokens.weight, streamed.norm.weight
    sizes = [block_nbytes(b) for b in streamed.layers[:4]]
    with use_runtime(RecordingRuntime()) as rt:
        streamer = streamed.enable_streaming("cpu", minimum_budget(sizes), num_blocks=4, pin_memory=True)
        with torch.no_grad():
            assert torch.equal(streamed(ids, mask, hidden_state_index=-3), expected)
    assert streamed.embed_tokens.weight is table  # never handed to the device residency
    assert streamed.norm.weight is not norm  # the final norm was
    # Page-locked: each streamed layer and the norm (padded to 256 bytes); never the table.
    assert rt.pinned == [sizes[i] for i in streamer.plan.streamed] + [256]


def test_llama_looks_up_on_the_host_and_moves_only_the_rows(llama: LlamaTextEncoder) -> None:
    ids, mask = llama_inputs()
    streamed = copy.deepcopy(llama)
    streamed.enable_streaming("meta", None, num_blocks=4)  # meta stands in for an accelerator
    inputs: list[torch.Tensor] = []
    streamed.layers[0].register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    with torch.no_grad():
        out = streamed(ids, mask, hidden_state_index=-3)
    assert streamed.embed_tokens.weight.device.type == "cpu" and streamed.norm.weight.is_meta
    assert inputs[0].is_meta and inputs[0].shape == (2, 13, 32)  # the looked-up rows, on the device
    assert out.is_meta and out.shape == (2, 13, 32)


def test_on_device_device_bytes_and_idempotent_moves(transformer: FramePackTransformer, step_inputs: dict) -> None:
    model = copy.deepcopy(transformer)
    expected = denoise_steps(model, step_inputs, None)[0]
    assert not model.on_device and model.device_bytes == 0  # streaming off
    sizes = [block_nbytes(b) for b in model.streamable_blocks()]
    streamer = model.enable_streaming("cpu", minimum_budget(sizes))
    fixed = model.streaming_sizes().fixed_bytes
    assert model.on_device and model.device_bytes == fixed + streamer.plan.device_bytes
    shells = list(streamer.iterate())
    with use_runtime(RecordingRuntime()) as rt:
        model.unload()
        model.unload()  # already unloaded: nothing more to free
        assert not model.on_device and model.device_bytes == 0
        assert rt.empty_cache_calls == 2  # once for the blocks, once for the rest
        model.load()
        model.load()
    assert model.on_device and model.device_bytes == fixed + streamer.plan.device_bytes
    assert all(a is b for a, b in zip(shells, streamer.iterate()))
    assert torch.equal(denoise_steps(model, step_inputs, None)[0], expected)


def test_llama_residency_places_exactly_what_streaming_sizes_counts(llama: LlamaTextEncoder) -> None:
    ids, mask = llama_inputs()
    model = copy.deepcopy(llama)
    table, unused = model.embed_tokens.weight, model.layers[4].mlp.up_proj.weight
    residency = model.residency("meta", 4)  # meta stands in for an accelerator
    raw_layers = sum(t.nbytes for layer in model.layers[:4] for t in layer.parameters())
    assert residency.nbytes == model.streaming_sizes(4).fixed_bytes + raw_layers == 32 * 4 + raw_layers
    residency.load()
    assert model.embed_tokens.weight is table and model.layers[4].mlp.up_proj.weight is unused
    assert model.layers[3].mlp.up_proj.weight.is_meta and model.norm.weight.is_meta
    with torch.no_grad():
        out = model(ids, mask, hidden_state_index=-3)
    assert out.is_meta and out.shape == (2, 13, 32)
    residency.unload()
    with torch.no_grad():
        assert torch.equal(model(ids, mask, hidden_state_index=-3), llama(ids, mask, hidden_state_index=-3))
