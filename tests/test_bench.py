"""`videoiq bench quant|train|infer`: the figures each returns (tiny sizes here; figures in the README), and the
command line passing its arguments through."""
import pytest
import torch.nn.functional as F

from videoiq.cli import main
from videoiq.flops import action_usage, video_cost


@pytest.mark.slow
def test_bench_quant_compares_each_width_with_a_plain_conv():
    from videoiq.bench.quant import bench_quant

    table = bench_quant(channels=8, size=8, batch=2, repeat=2, threads=1)
    assert set(table) == {"plain nn.Conv2d", *[f"QuantConv2d {b}-bit weights" for b in (32, 4, 2)],
                          *[f"PACT + QuantConv2d {b}-bit" for b in (32, 4, 2)]}
    plain = table["plain nn.Conv2d"]["ms"]
    for row in table.values():
        assert row["ms"] > 0 and row["peak_mib"] > 0
        assert row["vs_plain"] == pytest.approx(row["ms"] / plain)


@pytest.mark.slow
def test_bench_infer_prices_every_mix():
    from videoiq.bench.infer import MIXES, _actions, _model, bench_infer

    setting = {"backbone": "ap_resnet_tiny", "policy": "policy_mobilenet_v2_tiny", "frames": 4, "size": 32,
               "policy_size": 16, "batch": 2, "classes": 5}
    table = bench_infer(**setting, repeat=1, threads=1, mixes=("skip50",), engines=("float", "int8"))
    assert list(table) == ["dense fp", "dense all-precision", "policy only", "frames 32", "frames 32 int8",
                           "skip50", "skip50 int8"]
    model = _model(setting)
    cost = video_cost(model.backbone, model.policy, num_frames=4, input_size=32)
    half = {"32bit": 0.5, "skip1": 0.5}
    forced = _actions(half, model.actions, batch=2, frames=4)  # what the skip50 case runs
    assert action_usage(F.one_hot(forced, len(model.actions)), model.actions) == {
        a: half.get(a, 0.0) for a in model.actions}
    fp = cost.gmacs({"32bit": 1.0}, with_policy=False).total
    assert table["dense fp"]["gflops_run"] == pytest.approx(fp) and table["dense fp"]["time_vs_fp"] == 1.0
    assert table["skip50"]["gflops_paper"] == pytest.approx(cost.gmacs(half).total)
    assert table["skip50"]["gflops_run"] == pytest.approx(cost.gmacs(half, charge_skipped=False).total)
    assert table["skip50"]["gflops_vs_fp"] == pytest.approx(table["skip50"]["gflops_run"] / fp)
    assert table["policy only"]["gflops_paper"] is None and table["policy only"]["saving_realized"] is None
    assert MIXES["skip50"][1] == half
    assert table["skip50 int8"]["gflops_run"] == table["skip50"]["gflops_run"]  # the engine changes time, not work
    assert table["frames 32"]["gflops_run"] == pytest.approx(fp)
    for row in table.values():
        assert row["ms_per_video"] > 0 and row["peak_mib"] > 0


@pytest.mark.ray
def test_bench_train_runs_every_stage_bare_and_on_ray(ray_local, tmp_path):
    from videoiq.bench.train import STAGES, bench_train

    table = bench_train("resnet_tiny", "policy_mobilenet_v2_tiny", frames=2, size=32, batch=2, steps=1, classes=5,
                        threads=1, ray_workers=(1,), storage=str(tmp_path))
    assert list(table) == list(STAGES)
    for row in table.values():
        assert row["bare_samples_per_s"] > 0 and row["ray_1w_samples_per_s"] > 0 and row["peak_mib"] > 0
        assert row["ray_1w_vs_bare"] == pytest.approx(row["ray_1w_samples_per_s"] / row["bare_samples_per_s"])


@pytest.mark.ray
def test_bench_infer_pipeline_runs_every_case_through_infer(ray_local, tmp_path):
    from videoiq.bench.infer import MIXES
    from videoiq.bench.infer_pipeline import bench_infer_pipeline, random_policy_checkpoint
    from videoiq.predict import load_policy

    setting = {"backbone": "ap_resnet_tiny", "policy": "policy_mobilenet_v2_tiny", "frames": 4, "size": 32,
               "policy_size": 16, "classes": 3}
    table = bench_infer_pipeline(**setting, batch=2, videos=4, folder=str(tmp_path / "videos"), threads=1,
                                 engines=("float", "int8"))
    assert list(table) == ["dense fp", "even", "even int8"]
    cost = load_policy(random_policy_checkpoint(str(tmp_path / "policy.pt"), **setting)).cost
    assert table["dense fp"]["gflops_paper"] == pytest.approx(cost.gmacs({"32bit": 1.0}, with_policy=False).total)
    for key in ("even", "even int8"):  # 4 frames: one at each action, so the pipeline's GFLOPs are the mix's
        assert table[key]["gflops_paper"] == pytest.approx(cost.gmacs(MIXES["even"][1]).total)
        assert table[key]["gflops_run"] == pytest.approx(cost.gmacs(MIXES["even"][1], charge_skipped=False).total)
    for row in table.values():  # every video of each case, once in the first run
        assert row["videos"] == 4 and row["videos_per_s_first"] > 0 and 0 < row["model_busy"] <= 1


@pytest.mark.parametrize("args, module, expected", [
    (["quant", "--channels", "8", "--size", "8", "--batch", "2", "--kernel", "1", "--repeat", "2", "--threads", "1"],
     "quant", ((8, 8, 2, 1, 2, 1, "cpu"), {})),
    (["infer", "--backbone", "ap_resnet_tiny", "--policy", "p", "--frames", "4", "--size", "32", "--policy-size", "16",
      "--batch", "2", "--classes", "5", "--repeat", "1", "--mixes", "32", "skip50", "--engines", "int8"],
     "infer", (("ap_resnet_tiny", "p", 4, 32, 16, 2, 5, 1, 0, "cpu", ("32", "skip50"), ("int8",)), {})),
    (["train", "--backbone", "resnet_tiny", "--policy", "p", "--frames", "2", "--size", "32", "--batch", "2",
      "--steps", "1", "--classes", "5", "--ray-workers", "--amp", "bf16", "--channels-last", "--storage", "s"],
     "train", (("resnet_tiny", "p", 2, 32, 2, 1, 5, 0, "cpu", (), "bf16", True, "s"), {})),
])
def test_bench_commands_pass_their_arguments(monkeypatch, args, module, expected):
    import importlib

    calls = []
    monkeypatch.setattr(importlib.import_module(f"videoiq.bench.{module}"), f"bench_{module}",
                        lambda *a, **kw: calls.append((a, kw)))
    assert main(["bench", *args]) == 0
    assert calls == [expected]
