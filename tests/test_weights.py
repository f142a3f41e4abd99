"""Strict loading of torchvision-format weights into FP, any-precision and MobileNetV2 models."""
import pickle

import pytest
import torch
import torchvision

from videoiq.models import WeightLoadError, create_model, load_fp_weights, load_fp_weights_file, read_state_dict
from videoiq.quant import bit_width


@pytest.fixture(scope="module")
def tv_resnet18():
    return torchvision.models.resnet18().eval()


def test_torchvision_resnet_file_loads_and_gives_torchvision_logits(tmp_path, tv_resnet18):
    path = tmp_path / "resnet18.pth"
    torch.save(tv_resnet18.state_dict(), path)
    ours = create_model("resnet18", num_classes=1000).eval()
    report = load_fp_weights_file(ours, path, load_head=True)
    assert len(report.loaded) == len(ours.state_dict()) and not report.kept_init
    video = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        expected = tv_resnet18(video.flatten(0, 1)).view(2, 3, -1).mean(1)
        assert torch.allclose(ours(video), expected, atol=1e-5)


def test_fp_weights_fill_every_width_of_the_any_precision_model(tv_resnet18):
    ap = create_model("ap_resnet18", num_classes=10, clip_init=3.0)
    fresh_fc = ap.fc.weight.detach().clone()
    report = load_fp_weights(ap, tv_resnet18.state_dict(), source="tv", load_head=False)
    fp = tv_resnet18.state_dict()
    ap_state = ap.state_dict()
    for b in (32, 4, 2):
        for stat in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(ap_state[f"layer2.0.bn1.bn.{b}.{stat}"], fp[f"layer2.0.bn1.{stat}"])
            assert torch.equal(ap_state[f"layer2.0.downsample.1.bn.{b}.{stat}"], fp[f"layer2.0.downsample.1.{stat}"])
    assert torch.equal(ap_state["layer3.1.conv2.weight"], fp["layer3.1.conv2.weight"])
    assert torch.equal(ap_state["bn1.weight"], fp["bn1.weight"])  # the stem BN is shared, not switchable
    assert torch.equal(ap.fc.weight, fresh_fc)  # a new class count keeps a fresh classifier
    assert all(ap_state[k].item() == 3.0 for k in report.kept_init if ".alpha." in k)
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    # 8 basic blocks x 2 clip positions x 3 widths, plus the fresh fc
    assert len([k for k in report.kept_init if ".alpha." in k]) == 8 * 2 * 3
    with bit_width(ap, 4):
        assert torch.isfinite(ap(torch.randn(1, 2, 3, 32, 32))).all()


def test_missing_key_is_an_error_naming_it(tv_resnet18):
    state = dict(tv_resnet18.state_dict())
    del state["layer1.0.conv1.weight"]
    with pytest.raises(WeightLoadError, match=r"layer1\.0\.conv1\.weight"):
        load_fp_weights(create_model("resnet18"), state, source="f.pth", load_head=True)


def test_unexpected_key_is_an_error_naming_it(tv_resnet18):
    state = {**tv_resnet18.state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(WeightLoadError, match=r"match nothing in the model: extra\.weight"):
        load_fp_weights(create_model("resnet18"), state, source="f.pth", load_head=True)


def test_head_shape_mismatch_explains_load_head(tv_resnet18):
    with pytest.raises(WeightLoadError, match=r"fc\.weight: file \(1000, 512\) vs model \(7, 512\).*load_head"):
        load_fp_weights(create_model("resnet18", num_classes=7), tv_resnet18.state_dict(), source="f", load_head=True)


def test_wrong_architecture_is_refused(tv_resnet18):
    with pytest.raises(WeightLoadError, match="cannot load f into ResNet"):
        load_fp_weights(create_model("resnet50"), tv_resnet18.state_dict(), source="f", load_head=False)


def test_mobilenet_weights_load_into_the_policy_backbone_model():
    tv = torchvision.models.mobilenet_v2()
    ours = create_model("mobilenet_v2", num_classes=200)
    report = load_fp_weights(ours, tv.state_dict(), source="tv", load_head=False)
    assert report.ignored == ["classifier.1.weight", "classifier.1.bias"]
    assert torch.equal(ours.features[3].conv[0][0].weight, tv.features[3].conv[0][0].weight)


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_in_a_weight_file_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Payload()}, f, protocol=2)
    with pytest.raises(WeightLoadError, match="weights_only=True"):
        read_state_dict(path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_missing_or_non_state_dict_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    path = tmp_path / "wrapped.pth"
    torch.save({"model": {"a": torch.zeros(1)}, "epoch": 3}, path)
    with pytest.raises(WeightLoadError, match="expected a flat state dict of tensors"):
        read_state_dict(path)
