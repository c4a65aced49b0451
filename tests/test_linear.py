"""framepack.models.linear.Linear: exactly nn.Linear until a narrow weight or LoRA pairs are given."""

from __future__ import annotations

import torch
from torch import nn

from framepack.models.linear import Linear, LoraPairs, LoraStrengths, PairPlacement


def _pair() -> tuple[nn.Linear, Linear, torch.Tensor]:
    torch.manual_seed(0)
    reference = nn.Linear(12, 20)
    ours = Linear(12, 20)
    ours.load_state_dict(reference.state_dict())
    return reference.requires_grad_(False), ours.requires_grad_(False), torch.randn(2, 5, 12)


def test_plain_layer_is_bit_identical_to_nn_linear_in_both_call_forms() -> None:
    reference, ours, x = _pair()
    expected = reference(x)
    assert torch.equal(ours(x), expected)
    out = torch.empty(2, 5, 20)
    ours.forward_into(out, x)
    assert torch.equal(out, expected)
    joint = torch.empty(2, 5, 30)  # a slice of a wider buffer is not contiguous: the copy path
    ours.forward_into(joint[..., 5:25], x)
    assert torch.equal(joint[..., 5:25], expected)
    assert set(ours.state_dict()) == {"weight", "bias"}  # no scale, no pairs: the checkpoint layout of nn.Linear


def test_bfloat16_storage_under_a_float32_bias_computes_with_the_upcast_weight() -> None:
    reference, ours, x = _pair()
    ours.weight = nn.Parameter(ours.weight.detach().to(torch.bfloat16), requires_grad=False)
    assert ours.compute_dtype == torch.float32
    expected = x @ reference.weight.detach().to(torch.bfloat16).float().t() + reference.bias.detach()
    torch.testing.assert_close(ours(x), expected, rtol=1e-6, atol=1e-6)


def test_lora_pairs_add_their_rows_and_follow_the_shared_strength() -> None:
    reference, ours, x = _pair()
    strengths = LoraStrengths(style=0.5)
    ours.lora = LoraPairs(strengths)
    down, up = torch.randn(3, 12), torch.randn(8, 3)
    ours.lora.append(PairPlacement("style", slice(4, 12), scale=2.0), down, up)
    weight = reference.weight.detach().clone()
    weight[4:12] += 0.5 * 2.0 * up @ down
    torch.testing.assert_close(ours(x), x @ weight.t() + reference.bias.detach(), rtol=1e-5, atol=1e-5)
    strength = strengths.tensor("style")  # what a compiled graph reads: changed in place, never replaced
    strengths["style"] = 0.0
    assert strengths.tensor("style") is strength and strength.item() == 0.0
    assert torch.equal(ours(x), reference(x))
    ours.lora.remove("style")
    assert len(ours.lora) == 0 and not list(ours.lora.buffers())
