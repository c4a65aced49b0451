"""Compiled blocks (framepack.models.compiled): torch.compile'd runs equal eager ones in float32,
compile each block kind once for a whole multi-section run, and fall back to eager with one
warning where compilation is unavailable.

Compiling on two CPU cores takes tens of seconds per block kind (a few with inductor's
cache warm), so the compiled tests are few: one pipeline run covers both loop modes,
streaming, TeaCache and two text lengths.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from framepack import FramePackPipeline, GenerationConfig
from framepack.cache import TeaCache
from framepack.cli import demo_image, main
from framepack.errors import ConfigError
from framepack.memory.streamer import block_nbytes, minimum_budget
from framepack.models.compiled import CompiledBlocks, _gelu_tanh, _inductor_unavailable
from framepack.models.linear import Linear
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from tests.lora_support import CONFIG, ORIGINAL_DOUBLE, ORIGINAL_SINGLE, layer_shape
from tests.transformer_support import conditioning_and_context, make_inputs, randomise_

NO_COMPILER = _inductor_unavailable(torch.device("cpu"))
needs_compiler = pytest.mark.skipif(NO_COMPILER is not None, reason=f"CPU inductor cannot compile: {NO_COMPILER}")

# window 3, 64 px: three sections of three steps, in seconds (as tests/test_pipeline.py's FAST)
FAST = dict(window=3, steps=3, resolution=64, seconds=1.2)


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    """Each test starts from dynamo's empty caches: graphs other tests compiled on the same
    code objects count toward its recompile limit, past which it would run them eager."""
    torch._dynamo.reset()


def streamed_tiny_pipeline() -> FramePackPipeline:
    pipe = FramePackPipeline.tiny(seed=0)
    transformer = pipe.components.transformer
    transformer.enable_streaming("cpu", minimum_budget([block_nbytes(b) for b in transformer.streamable_blocks()]))
    return pipe


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


def fallback_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "falling back to eager" in str(w.message)]


@needs_compiler
def test_compiled_run_equals_eager_in_both_modes_streamed_with_teacache_and_compiles_each_kind_once(
    tmp_path: Path,
) -> None:
    image = demo_image(96)
    eager, compiled = streamed_tiny_pipeline(), streamed_tiny_pipeline()
    blocks = compiled.compile()
    # Two modes (their packed contexts differ in length) and two prompts (their text lengths differ).
    runs = [("inverted", "a dancer"), ("forward", "a dancer leaps across the stage, arms wide, in the rain")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for mode, prompt in runs:
            config = GenerationConfig(mode=mode, cache=TeaCache(0.3), **FAST)
            expected_run = eager.stream(image, prompt, config, run_dir=tmp_path / f"eager-{mode}")
            got_run = compiled.stream(image, prompt, config, run_dir=tmp_path / f"compiled-{mode}")
            expected_sections, got_sections = list(expected_run), list(got_run)
            assert len(got_sections) == 3
            # TeaCache made the same choices, and skipped some steps.
            assert [s.cache_stats.skipped for s in got_sections] == [s.cache_stats.skipped for s in expected_sections]
            assert sum(s.cache_stats.skipped_count for s in got_sections) > 0
            expected, got = expected_run.result().latents, got_run.result().latents
            assert relative_error(got, expected) < 1e-5
            assert not torch.equal(got, expected)  # compiled code ran: it rounds differently from eager

    assert dict(blocks.graphs) == {"double": 1, "single": 1}  # six sections, two modes, two text lengths
    assert compiled.components.transformer.streamer.stats.passes > 0  # the blocks were streamed shells
    assert blocks.fallback is None and fallback_warnings(caught) == []


@pytest.fixture(scope="module")
def tiny_transformer() -> FramePackTransformer:
    model = FramePackTransformer(TransformerConfig.preset("tiny")).eval()
    randomise_(model, 5)
    return model


def one_call(model: FramePackTransformer) -> torch.Tensor:
    inputs = make_inputs(1, [7], seed=2)
    cond, context = conditioning_and_context(inputs)
    return model(inputs["latents"], inputs["timestep"], cond, context)


def test_a_backend_that_fails_falls_back_to_eager_with_one_warning(tiny_transformer: FramePackTransformer) -> None:
    tiny_transformer.compiled_blocks = None
    expected = one_call(tiny_transformer)

    def failing_backend(graph: torch.fx.GraphModule, example_inputs: list) -> None:
        raise RuntimeError("this backend compiles nothing")

    blocks = tiny_transformer.compile(backend=failing_backend)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got, again = one_call(tiny_transformer), one_call(tiny_transformer)
    finally:
        tiny_transformer.compiled_blocks = None
    messages = fallback_warnings(caught)
    assert len(messages) == 1 and "this backend compiles nothing" in messages[0]
    assert blocks.fallback is not None and dict(blocks.graphs) == {"double": 1}  # tried once, then never again
    assert torch.equal(got, expected) and torch.equal(again, expected)


def test_no_cpp_compiler_falls_back_to_eager_with_one_warning(
    tiny_transformer: FramePackTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._inductor import config

    tiny_transformer.compiled_blocks = None
    expected = one_call(tiny_transformer)
    monkeypatch.setattr(config.cpp, "cxx", ("framepack-test-no-such-compiler",))
    blocks = tiny_transformer.compile()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = one_call(tiny_transformer)
    finally:
        tiny_transformer.compiled_blocks = None
    messages = fallback_warnings(caught)
    assert len(messages) == 1 and "C++ compiler" in messages[0] and "framepack-test-no-such-compiler" in messages[0]
    assert dict(blocks.graphs) == {}  # nothing was handed to inductor
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_gelu_is_torch_tanh_gelu(dtype: torch.dtype) -> None:
    # float32 on a CPU takes the sigmoid form (a faster kernel from inductor), bfloat16 torch's own
    x = torch.linspace(-8, 8, 4001).to(dtype)
    expected = torch.nn.functional.gelu(x.double(), approximate="tanh")
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    assert (_gelu_tanh(x).double() - expected).abs().max().item() < tolerance


def test_compile_refuses_an_unknown_mode(tiny_transformer: FramePackTransformer) -> None:
    with pytest.raises(ConfigError, match=r"mode must be one of .*'default'.*got 'fastest'"):
        tiny_transformer.compile("fastest")
    assert tiny_transformer.compiled_blocks is None


def lora_on_every_block(seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA on every Linear of every block of the tiny model, each with its own
    random alpha: the pairs' factors (strength x alpha / rank) differ between blocks."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for kind, count, table in (
        ("double_blocks", CONFIG.num_layers, ORIGINAL_DOUBLE),
        ("single_blocks", CONFIG.num_single_layers, ORIGINAL_SINGLE),
    ):
        for index in range(count):
            for layer in table:
                name = f"{kind}.{index}.{layer}"
                fan_in, rows = layer_shape(name)
                key = "lora_unet_" + name.replace(".", "_")
                tensors[key + ".lora_down.weight"] = torch.randn(rank, fan_in, generator=g) / fan_in**0.5
                tensors[key + ".lora_up.weight"] = torch.randn(rows, rank, generator=g) * 0.3
                tensors[key + ".alpha"] = torch.tensor(float(torch.randint(1, 4 * rank, (), generator=g)))
    return tensors


@pytest.mark.parametrize("storage", ["float32", "fp8"])
def test_runtime_loras_compile_each_block_kind_once_across_factors_and_strength_changes(storage: str) -> None:
    """Whether a LoRA's factor or strength becomes a graph constant (a recompile per value, or a
    stale value) is dynamo's doing, before any backend: ``aot_eager`` runs the traced graphs
    without inductor's C++ compile (tens of seconds per graph here), so this needs no compiler."""
    model = FramePackTransformer(CONFIG).eval()
    randomise_(model, 5)
    if storage == "fp8":
        model.quantize_fp8(block=16)  # float8 weights, float32 compute: the LoRA pairs are float32
    a = model.add_lora(lora_on_every_block(seed=2), strength=0.5, name="a")
    model.add_lora(lora_on_every_block(seed=3, rank=2), strength=-1.2, name="b")
    scales = {p.scale for m in model.modules() if isinstance(m, Linear) and m.lora for p in m.lora.placements}
    assert len(scales) > 4  # factors differ between layers, blocks and LoRAs: none may be a graph constant
    expected = one_call(model)
    blocks = model.compile(backend="aot_eager")
    got = one_call(model)
    assert relative_error(got, expected) < 1e-5 and not torch.equal(got, expected)

    model.set_lora_strength(a, -1.5)
    got = one_call(model)
    model.compiled_blocks = None
    changed = one_call(model)
    assert relative_error(changed, expected) > 1e-2  # the strength moved the output...
    assert relative_error(got, changed) < 1e-5 and not torch.equal(got, changed)  # ...and the graphs followed it
    assert dict(blocks.graphs) == {"double": 1, "single": 1} and blocks.fallback is None


def test_the_command_compiles_with_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[CompiledBlocks] = []
    original = FramePackPipeline.compile

    def recording(self: FramePackPipeline, mode: str = "default") -> CompiledBlocks:
        compiled.append(original(self, mode))
        return compiled[-1]

    monkeypatch.setattr(FramePackPipeline, "compile", recording)
    arguments = ["generate", "--tiny", "--resolution", "64", "--seconds", "0.8", "--steps", "2", "--window", "3"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*arguments, "--compile", "--out", str(tmp_path / "out.mp4")]) == 0
    (blocks,) = compiled
    assert (tmp_path / "out.mp4").stat().st_size > 0
    if NO_COMPILER is None:
        assert dict(blocks.graphs) == {"double": 1, "single": 1} and fallback_warnings(caught) == []
    else:
        assert blocks.fallback is not None and len(fallback_warnings(caught)) == 1
