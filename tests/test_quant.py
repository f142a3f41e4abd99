"""Quantizers against hand-derived grids, their straight-through gradients, switching."""
import math

import pytest
import torch

from videoiq.models import create_model
from videoiq.quant import (
    PACT,
    QuantConv2d,
    SwitchableBatchNorm2d,
    bit_width,
    bit_widths_of,
    check_bit_widths,
    clip_parameters,
    quantize_activation,
    quantize_weight,
    set_bit_width,
)

# Weights whose normalised values w_n = tanh(W) / (2 max|tanh W|) + 0.5 are [0, .35, .6, .8, 1]:
# tanh(W) = (w_n - 0.5) * 1.6, max |tanh W| = 0.8.
W_N = [0.0, 0.35, 0.6, 0.8, 1.0]
WEIGHT = torch.tensor([math.atanh((w - 0.5) * 1.6) for w in W_N], dtype=torch.float64).float()


def _expected(v, target_mean):
    """2 * v * (target_mean / mean(v)) - 1: the mean re-alignment and the map to [-1, 1]."""
    ratio = target_mean / (sum(v) / len(v))
    return [2 * x * ratio - 1 for x in v]


@pytest.mark.parametrize(
    "bits, master, expected",
    [
        # master 32: the 32-bit option is the normalised weight itself
        (32, 32, [2 * w - 1 for w in W_N]),
        # 4 of 32 bits: floor(16 w_n) / 16 = [0, 5, 9, 12, 16] / 16, rescaled to the master mean 0.55
        (4, 32, _expected([0, 5 / 16, 9 / 16, 12 / 16, 1], 0.55)),
        # 2 of 32 bits: floor(4 w_n) / 4 = [0, 1, 2, 3, 4] / 4, rescaled to 0.55
        (2, 32, _expected([0, 0.25, 0.5, 0.75, 1], 0.55)),
        # master 4: round(15 w_n) = [0, 5, 9, 12, 15]
        (4, 4, [2 * q / 15 - 1 for q in (0, 5, 9, 12, 15)]),
        # 2 of 4 bits: drop 2 LSBs of [0, 5, 9, 12, 15] -> [0, 4, 8, 12, 12], rescaled to 41/75
        (2, 4, _expected([0, 4 / 15, 8 / 15, 12 / 15, 12 / 15], 41 / 75)),
    ],
)
def test_weight_grid_matches_hand_values(bits, master, expected):
    out = quantize_weight(WEIGHT, bits, master)
    assert out.tolist() == pytest.approx(expected, abs=1e-5)


def test_mean_aligned_rescales_to_the_unquantized_mean():
    out = quantize_weight(WEIGHT, 2, 4, mean_aligned=True)
    assert out.tolist() == pytest.approx(_expected([0, 4 / 15, 8 / 15, 12 / 15, 12 / 15], 0.55), abs=1e-5)


@pytest.mark.parametrize("bits, levels", [(2, 5), (4, 17)])
def test_truncated_grid_has_at_most_2_pow_b_levels_plus_the_max(bits, levels):
    out = quantize_weight(torch.randn(64, 32, 3, 3), bits, 32)
    assert 2 < out.unique().numel() <= levels


def test_all_zero_truncation_is_left_unscaled():
    # All weights negative and tiny against the max: every 2-bit value floors to 0 but the max.
    w = torch.tensor([-3.0, -2.9, -2.95])
    out = quantize_weight(w, 2, 32)
    assert torch.isfinite(out).all()


def test_weight_ste_is_identity_through_quantization():
    w1 = torch.randn(8, 4, 3, 3, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    g = torch.randn_like(w1)
    (quantize_weight(w1, 2, 32) * g).sum().backward()
    t = torch.tanh(w2)
    ((2 * (t / (2 * t.abs().max()) + 0.5) - 1) * g).sum().backward()
    assert torch.allclose(w1.grad, w2.grad)


def test_pact_forward_and_gradients_by_hand():
    alpha = torch.tensor(2.0, requires_grad=True)
    x = torch.tensor([0.0, 0.3, 1.0, 2.0, 3.0], requires_grad=True)
    y = quantize_activation(x, alpha, 2)  # scale 3/2: levels 0, 2/3, 4/3, 2
    assert y.tolist() == pytest.approx([0.0, 0.0, 4 / 3, 2.0, 2.0])
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    (y * g).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 4.0, 0.0]  # 0 <= x <= alpha passes
    assert alpha.grad.item() == pytest.approx(4.0 + 5.0)  # x >= alpha feeds the clip


def test_pact_negative_input_gets_no_gradient():
    x = torch.tensor([-1.0, 0.5], requires_grad=True)
    quantize_activation(x, torch.tensor(1.0), 4).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0]


def test_pact_32_bits_only_clips():
    x = torch.rand(1000) * 3
    y = quantize_activation(x, torch.tensor(2.0), 32)
    assert torch.allclose(y, x.clamp(max=2.0), rtol=1e-6, atol=1e-6)


def test_pact_one_bit_is_sign_as_in_the_original():
    x = torch.tensor([0.0, 0.1, 0.9, 1.5, 3.0], requires_grad=True)
    alpha = torch.tensor(2.0, requires_grad=True)
    y = quantize_activation(x, alpha, 1)
    assert y.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]  # not {0, alpha} with a threshold at alpha / 2
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0] and alpha.grad.item() == 1.0  # the same STE as other widths


def test_a_clip_pushed_below_zero_acts_as_the_floor_not_as_a_constant():
    from videoiq.quant import MIN_CLIP

    x = torch.tensor([0.0, 0.0005, 0.5, 2.0], requires_grad=True)
    alpha = torch.tensor(-3.0, requires_grad=True)
    y = quantize_activation(x, alpha, 4)
    assert y.tolist() == pytest.approx([0.0, 0.0005, MIN_CLIP, MIN_CLIP], abs=1e-4)  # not -3 everywhere
    y.sum().backward()
    assert alpha.grad.item() == 2.0 and x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]  # the masks of the floor


def test_pact_mean_aligned_rescales_activations_to_the_input_mean():
    x = torch.rand(1000) * 3
    alpha = torch.tensor(2.0)
    plain = quantize_activation(x, alpha, 2)
    aligned = quantize_activation(x, alpha, 2, mean_aligned=True)
    assert torch.allclose(aligned.mean(), x.mean(), rtol=1e-5)  # the unclipped input's mean, as the original
    assert torch.allclose(aligned, plain * (x.mean() / plain.mean()))
    assert quantize_activation(torch.zeros(5), alpha, 2, mean_aligned=True).abs().sum() == 0  # nothing to align
    act = create_model("ap_resnet_tiny", num_classes=3, mean_aligned=True).layer1[0].act_in
    assert act.mean_aligned


def test_pact_module_keeps_one_clip_per_width():
    act = PACT((32, 4, 2), init=3.0)
    assert sorted(act.alpha.keys()) == ["2", "32", "4"]
    x = torch.rand(100) * 4
    with bit_width(act, 4):
        y = act(x)
    y.sum().backward()
    assert act.alpha["4"].grad is not None and act.alpha["2"].grad is None
    shared = PACT((32, 4), switchable=False)
    assert list(shared.alpha.keys()) == ["shared"]


def test_switchable_bn_updates_only_the_active_width():
    bn = SwitchableBatchNorm2d(3, (32, 4, 2)).train()
    with bit_width(bn, 4):
        bn(torch.randn(4, 3, 5, 5) + 5)
    assert bn.bn["4"].running_mean.abs().sum() > 0
    assert bn.bn["32"].running_mean.abs().sum() == 0 and bn.bn["2"].running_mean.abs().sum() == 0


def test_quant_conv_uses_the_active_width():
    conv = QuantConv2d(2, 3, 3, bit_widths=(32, 2), bias=False)
    x = torch.randn(1, 2, 5, 5)
    full = conv(x)
    with bit_width(conv, 2):
        low = conv(x)
        expected = torch.nn.functional.conv2d(x, quantize_weight(conv.weight, 2, 32))
    assert torch.allclose(low, expected) and not torch.allclose(full, low)
    assert conv.active_bits == 32


def test_bit_width_context_restores_and_rejects_foreign_widths():
    model = torch.nn.Sequential(QuantConv2d(1, 1, 1, bit_widths=(8, 4)), SwitchableBatchNorm2d(1, (8, 4)))
    set_bit_width(model, 4)
    with bit_width(model, 8):
        assert all(m.active_bits == 8 for m in model)
    assert all(m.active_bits == 4 for m in model)
    with pytest.raises(ValueError, match=r"bit width 2 is not in its family \[8, 4\]"):
        set_bit_width(model, 2)
    with pytest.raises(ValueError, match="no bit-switchable layers"):
        set_bit_width(torch.nn.Linear(1, 1), 4)
    assert bit_widths_of(model) == (8, 4) and bit_widths_of(torch.nn.Linear(1, 1)) is None


@pytest.mark.parametrize(
    "family, message",
    [((4, 32), "descending"), ((8, 8), "distinct"), ((32, 0), r"\[1, 32\]"), ((33,), r"\[1, 32\]"),
     ((), "at least one")],
)
def test_bit_width_family_validation(family, message):
    with pytest.raises(ValueError, match=message):
        check_bit_widths(family)


def test_clip_parameters_group_by_width():
    from videoiq.models import create_model

    groups = clip_parameters(create_model("ap_resnet_tiny", num_classes=3))
    assert sorted(groups) == ["2", "32", "4"]
    assert all(len(ps) == 4 * 3 for ps in groups.values())  # 4 bottlenecks x 3 positions


def test_frozen_quantized_weights_are_kept_until_the_weight_changes():
    import copy
    import pickle

    conv = QuantConv2d(4, 4, 3, padding=1, bias=False, bit_widths=(32, 4, 2))
    x = torch.rand(2, 4, 8, 8)
    expected = torch.nn.functional.conv2d(x, quantize_weight(conv.weight, 4, 32), padding=1)
    conv.set_active_bits(4)
    with torch.no_grad():
        first = conv(x)
        assert conv._frozen[4][1] is conv.quantized_weight()  # the kept copy is reused
        assert torch.allclose(first, expected, atol=1e-6)
        assert pickle.loads(pickle.dumps(conv))._frozen == {} and copy.deepcopy(conv)._frozen == {}
        conv.weight.mul_(-1)  # an in-place change (as an optimizer step makes) bumps the version
        changed = torch.nn.functional.conv2d(x, quantize_weight(conv.weight, 4, 32), padding=1)
        assert torch.allclose(conv(x), changed, atol=1e-6) and not torch.allclose(changed, first)
    conv(x).sum().backward()  # training: nothing kept, gradients flow
    assert conv.weight.grad is not None and conv._frozen == {}
