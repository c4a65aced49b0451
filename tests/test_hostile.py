"""Hostile input: whatever a user types, the command answers with one line and touches no file of theirs.

Most cases run the command as a user does, in a subprocess, and check the exit code (2: the
input is wrong, 1: a fault), that stderr is one ``error:`` line without a traceback, and that
every file the test folder held beforehand is byte for byte the same afterwards.
"""

from __future__ import annotations

import math

import pytest

from framepack.errors import ConfigError
from framepack.models.llama import LlamaConfig
from framepack.models.transformer import TransformerConfig

from tests.transformer_support import TINY


# --- model config.json: every field its annotated JSON type ------------------------------------


def tiny_transformer_config() -> dict:
    return TransformerConfig(**TINY).to_dict()


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("num_layers", "2", "field 'num_layers' expects int, got '2' (str)"),
        ("num_layers", True, "field 'num_layers' expects int, got True (bool)"),
        ("num_layers", 2.0, "field 'num_layers' expects int, got 2.0 (float)"),
        ("guidance_embeds", 1, "field 'guidance_embeds' expects bool, got 1 (int)"),
        ("guidance_embeds", "true", "field 'guidance_embeds' expects bool, got 'true' (str)"),
        ("mlp_ratio", "4", "field 'mlp_ratio' expects float, got '4' (str)"),
        ("mlp_ratio", math.nan, "field 'mlp_ratio' expects float, got nan (float)"),
        ("qk_norm", None, "field 'qk_norm' expects str, got None (NoneType)"),
        ("rope_axes_dim", [4, "6", 6], "field 'rope_axes_dim' expects tuple[int, ...], got (4, '6', 6) (tuple)"),
        ("rope_axes_dim", 16, "field 'rope_axes_dim' expects tuple[int, ...], got 16 (int)"),
        ("image_condition_type", 3, "field 'image_condition_type' expects str | None, got 3 (int)"),
    ],
)
def test_model_config_field_of_the_wrong_type_is_named(field: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TransformerConfig.from_dict({**tiny_transformer_config(), field: value})
    assert str(caught.value) == f"TransformerConfig: {expected}"


def test_model_config_takes_an_int_for_a_float_and_null_for_an_optional() -> None:
    config = TransformerConfig.from_dict({**tiny_transformer_config(), "mlp_ratio": 4, "image_condition_type": None})
    assert config.mlp_ratio == 4 and config.image_condition_type is None
    assert TransformerConfig.from_dict(tiny_transformer_config()) == TransformerConfig(**TINY)


def test_model_config_mapping_fields_are_checked() -> None:
    llama = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=2, vocab_size=32, rms_norm_eps=1e-5, rope_theta=10000.0)
    assert LlamaConfig.from_dict({**llama, "rope_scaling": None}).rope_scaling is None
    with pytest.raises(ConfigError, match="field 'rope_scaling' expects Mapping"):
        LlamaConfig.from_dict({**llama, "rope_scaling": "linear"})
