"""float16 helpers: overflow detection naming the block, float32 residual stream."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import torch

from framepack.components import component_dtypes
from framepack.device_runtime import DeviceRuntime, use_runtime
from framepack.errors import FramePackError, NumericalError
from framepack.models import loading
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.precision import add_residual, check_finite, default_dtype


def test_finite_tensor_passes_through() -> None:
    x = torch.tensor([1.0, -2.0])
    assert check_finite(x, "block 0") is x


def test_non_finite_values_are_counted_and_located() -> None:
    x = torch.tensor([1.0, float("inf"), -float("inf"), float("nan"), -3.0])
    with pytest.raises(
        NumericalError, match=r"double block 3: 2 inf and 1 NaN of 5 values .*largest finite magnitude 3"
    ) as e:
        check_finite(x, "double block 3")
    assert isinstance(e.value, FramePackError) and "float16" not in str(e.value)


def test_float16_overflow_message_points_at_float32_islands() -> None:
    x = torch.tensor([60000.0, 1.0], dtype=torch.float16) * 2  # 120000 > 65504 -> inf
    with pytest.raises(NumericalError, match="float16 overflows above 65504"):
        check_finite(x, "single block 7")


def test_add_residual_keeps_float32_range() -> None:
    stream = torch.tensor([60000.0, 1.0])
    update = torch.tensor([10000.0, 0.5], dtype=torch.float16)
    gate = torch.tensor([1.0, 2.0], dtype=torch.float16)
    out = add_residual(stream, update, gate)
    assert out.dtype == torch.float32
    assert out.tolist() == [70000.0, 2.0]  # in float16 the first would be inf
    assert add_residual(stream, update).tolist() == [70000.0, 1.5]


def test_cpu_computes_in_float32() -> None:
    assert default_dtype("cpu") == default_dtype(torch.device("cpu")) == torch.float32


class StandInRuntime(DeviceRuntime):
    """A CUDA device that does or does not compute bfloat16 natively (sm75 does not)."""

    def __init__(self, bf16: bool) -> None:
        self.bf16 = bf16

    def is_available(self) -> bool:
        return True

    def supports_bf16(self, device: torch.device) -> bool:
        return self.bf16 or device.type != "cuda"


@pytest.mark.parametrize(
    ("bf16", "transformer", "others"), [(False, torch.float16, torch.float16), (True, torch.bfloat16, torch.float16)]
)
def test_accelerator_dtypes_follow_the_runtime(
    bf16: bool, transformer: torch.dtype, others: torch.dtype, tmp_path: Path
) -> None:
    cuda = torch.device("cuda")
    (tmp_path / "config.json").write_text(json.dumps(TransformerConfig.preset("tiny").to_dict()))
    with use_runtime(StandInRuntime(bf16)):
        assert default_dtype(cuda) == transformer
        assert component_dtypes(cuda, None) == (transformer, others)
        with (
            mock.patch.object(loading, "checkpoint_files", return_value=[]),
            mock.patch.object(loading, "load_checkpoint") as load,
        ):
            FramePackTransformer.from_pretrained(tmp_path, device=cuda)  # no dtype given
        assert load.call_args.kwargs["dtype"] == transformer
        # CPU stays float32; an explicit dtype still wins
        assert default_dtype("cpu") == torch.float32
        assert component_dtypes(torch.device("cpu"), None) == (torch.float32, torch.float32)
        assert component_dtypes(cuda, torch.bfloat16) == (torch.bfloat16, torch.float16)
        assert component_dtypes(cuda, torch.float32) == (torch.float32, torch.float32)


def test_every_model_reports_its_dtype_and_device_from_its_weights() -> None:
    from framepack.components import tiny_components

    modules = tiny_components().modules()
    assert sorted(modules) == ["image_encoder", "text_encoder", "text_encoder_2", "transformer", "vae"]
    for name, model in modules.items():
        assert (model.dtype, model.device) == (torch.float32, torch.device("cpu")), name
        model.to(torch.float16)
        assert model.dtype == torch.float16, name
