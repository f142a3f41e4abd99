"""MACs counted from the graph against torchvision's metadata, hand formulas and the paper's numbers."""
import pytest
import torch
import torchvision

from videoiq.flops import PAPER_COSTS, VideoCost, action_cost, action_usage, bit_cost, count_macs, video_cost
from videoiq.models import create_model


def test_bit_cost_table():
    assert [bit_cost(b) for b in (32, 16, 8, 4, 2, 1)] == [1.0, 1.0, 1.0, 0.25, 0.0625, 1 / 64]
    assert action_cost("fp") == 1.0 and action_cost("4bit") == 0.25 and action_cost("skip2") == 0.0
    with pytest.raises(ValueError, match="unknown policy action"):
        action_cost("half")


def test_resnet50_per_frame_matches_torchvision_metadata():
    macs = count_macs(create_model("resnet50", num_classes=1000), (1, 1, 3, 224, 224)).total
    assert round(macs / 1e9, 3) == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["_ops"]


def test_mobilenet_v2_per_frame_matches_torchvision_metadata():
    macs = count_macs(create_model("mobilenet_v2", num_classes=1000), (1, 1, 3, 224, 224)).total
    assert round(macs / 1e9, 3) == torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["_ops"]


@pytest.mark.parametrize("name, gmacs, original", [("resnet50", 65.40, 65.76), ("resnet18", 29.02, 29.1)])
def test_sixteen_frame_videos_are_close_to_the_original_constants(name, gmacs, original):
    cost = video_cost(create_model(name, num_classes=200), num_frames=16, input_size=224)  # ActivityNet
    total = (cost.fp_macs + cost.quantized_macs) / 1e9
    assert total == pytest.approx(gmacs, abs=0.01)
    assert abs(total - original) / original < 0.01
    assert cost.fp_macs / 1e9 == pytest.approx(1.89, abs=0.01)  # the original's 1.92: stem conv + fc


@pytest.mark.parametrize("action, original", [("32bit", 66.66), ("4bit", 18.78), ("2bit", 6.81)])
def test_paper_formula_reproduces_the_original_numbers(action, original):
    # the original's GFLOPs constants: all frames at 32 bits 66.66, at 4 bits 18.78, at 2 bits 6.81 GFLOPs per video
    assert round(PAPER_COSTS["resnet50"].gmacs({action: 1.0}).total, 2) == original


def test_usage_mix_and_skip_conventions():
    cost = VideoCost(4, fp_macs=1e9, quantized_macs=8e9, policy_cnn_macs=2e9, policy_rnn_macs=1e9)
    mix = cost.gmacs({"32bit": 0.25, "2bit": 0.25, "skip1": 0.5})
    assert mix.efficiency == pytest.approx(0.25 + 0.25 / 16)
    assert mix.backbone == pytest.approx(1 + 8 * (0.25 + 0.25 / 16))
    assert mix.policy == pytest.approx(3.0) and mix.total == pytest.approx(mix.backbone + 3.0)
    assert cost.gmacs({"32bit": 0.25, "2bit": 0.25, "skip1": 0.5}, charge_skipped=False).backbone == pytest.approx(
        0.5 + 8 * (0.25 + 0.25 / 16)
    )
    with pytest.raises(ValueError, match="sum to 1"):
        cost.gmacs({"32bit": 0.5})


def _hook_count(model, video):
    """An independent count: conv and linear MACs from output shapes seen by forward hooks."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * module.in_channels // module.groups * k
        elif isinstance(module, torch.nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model.eval()(video)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", ["resnet_tiny", "ap_resnet_tiny", "resnet18", "mobilenet_v2_tiny"])
def test_graph_count_agrees_with_a_hook_count(name):
    model = create_model(name, num_classes=5)
    video = torch.randn(1, 3, 3, 48, 48)
    assert count_macs(model, tuple(video.shape)).total == _hook_count(model, video)


def test_policy_split_matches_the_lstm_formula():
    policy = create_model("policy_mobilenet_v2_tiny", num_precisions=3, skip_choices=(1,), num_classes=6)
    backbone = create_model("ap_resnet_tiny", num_classes=6)
    frames, hidden, actions = 4, 32, 4
    cost = video_cost(backbone, policy, num_frames=frames, input_size=32)
    lstm = frames * 4 * hidden * (64 + hidden)  # the tiny MobileNetV2 ends in 64 features
    heads = frames * hidden * actions + hidden * 6  # the auxiliary classifier runs once per video
    assert cost.policy_rnn_macs == lstm + heads


def test_counting_leaves_the_model_untouched():
    model = create_model("resnet_tiny", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, (1, 2, 3, 32, 32))
    assert next(model.parameters()).device.type == "cpu"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_usage_histogram_from_decisions_prices_a_video():
    actions = ("32bit", "4bit", "2bit", "skip1")
    picks = torch.tensor([[0, 1, 1, 3], [2, 2, 3, 3]])  # 8 frames: 1 x 32, 2 x 4, 2 x 2, 3 x skip
    usage = action_usage(torch.nn.functional.one_hot(picks, 4).float(), actions)
    assert usage == {"32bit": 1 / 8, "4bit": 2 / 8, "2bit": 2 / 8, "skip1": 3 / 8}
    gmacs = PAPER_COSTS["resnet50"].gmacs(usage)
    assert gmacs.efficiency == pytest.approx((1 + 2 * 0.25 + 2 / 16) / 8)
    assert gmacs.total == pytest.approx(1.92 + 63.84 * gmacs.efficiency + 0.898)
    with pytest.raises(ValueError, match="expected 3"):
        action_usage(torch.zeros(2, 4), actions[:3])
