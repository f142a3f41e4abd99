"""The stages in-process on tiny models and the generated data: hand-off, resume, tasks and checkpoints."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from videoiq.config import ConfigError, config_from_dict
from videoiq.losses import soft_cross_entropy
from videoiq.models import create_model
from videoiq.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from videoiq.train.session import train_in_process
from videoiq.train.tasks import AnyPrecisionTask

from helpers import QUIET, TINY_POLICY, stage_config as _cfg

TOP1_OF_8 = {100 * k / 8 for k in range(9)}  # the top-1 values a score over the 8 generated val videos can take


@pytest.mark.slow
def test_the_four_stages_chain_by_checkpoint(trained_stages):
    runs, metrics = trained_stages
    fp = metrics["fp"]
    assert fp["epoch"] == 2.0 and fp["val/videos"] == 8.0 and fp["val/top1"] in TOP1_OF_8
    assert {"val/b32/top1", "val/b4/top1", "val/b2/top1", "train/b32", "train/b2"} <= set(metrics["ap"])
    ap = load_checkpoint(runs / "ap", stages=("ap",))
    assert ap["models"]["model"]["kwargs"]["bit_widths"] == [32, 4, 2]
    assert ap["models"]["teacher"]["name"] == "resnet_tiny"
    p = metrics["policy"]
    usage = sum(v for k, v in p.items() if k.startswith("val/usage/") and k.count("/") == 2)  # not per kind
    assert usage == pytest.approx(100.0) and {"val/usage/32bit", "val/usage/skip1", "val/gflops", "val/mAP"} <= set(p)
    policy = load_checkpoint(runs / "policy", stages=("policy",))
    assert policy["extra"]["actions"] == ["32bit", "4bit", "2bit", "skip1"]
    assert policy["extra"]["temperature"] == pytest.approx(5.0)  # epoch 0 runs at the initial temperature
    lines = [json.loads(x) for x in (runs / "fp" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1.0, 2.0] and lines[-1] == metrics["fp"]
    # the frozen parts stayed exactly as the ap stage left them
    for key, value in ap["models"]["model"]["state_dict"].items():
        assert torch.equal(policy["models"]["model"]["state_dict"][key], value), key


@pytest.mark.slow
def test_resume_continues_at_the_next_epoch(trained_stages, tiny_videos, tmp_path):
    runs, _ = trained_stages
    lines = []
    cfg = _cfg("policy_pretrain", tiny_videos, model={"name": "mobilenet_v2_tiny"}, optim={"epochs": 2})
    import shutil
    shutil.copytree(runs / "pp", tmp_path / "pp")  # one epoch done
    final = train_in_process(cfg, tmp_path / "pp", printer=lines.append)
    assert lines[0] == f"policy_pretrain: resuming {tmp_path / 'pp'} after epoch 1"
    assert final["epoch"] == 2.0 and load_checkpoint(tmp_path / "pp")["epoch"] == 2
    again = []
    assert train_in_process(cfg, tmp_path / "pp", printer=again.append) == final
    assert "already has all 2 epochs" in again[0]


@pytest.mark.slow
def test_validation_runs_every_n_th_epoch_and_after_the_last_and_never_changes_training(trained_stages, tiny_videos,
                                                                                        tmp_path):
    runs, _ = trained_stages
    init = {"backbone_checkpoint": str(runs / "ap"), "policy_backbone_checkpoint": str(runs / "pp")}
    weights = {}
    for every in (1, 2):
        cfg = _cfg("policy", tiny_videos, policy=TINY_POLICY, init=init, optim={"epochs": 3, "val_every": every})
        final = train_in_process(cfg, tmp_path / str(every), printer=QUIET)
        lines = [json.loads(x) for x in (tmp_path / str(every) / "metrics.jsonl").read_text().splitlines()]
        assert [x["epoch"] for x in lines] == [1.0, 2.0, 3.0] and "val/top1" in final
        assert ["val/top1" in x for x in lines] == ([True] * 3 if every == 1 else [False, True, True])
        weights[every] = load_checkpoint(tmp_path / str(every))["models"]["policy"]["state_dict"]
    # the policy's Gumbel noise comes from the global RNG, which validation must leave alone
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])


@pytest.mark.slow
def test_hand_off_traps_are_errors(trained_stages, tiny_videos, tmp_path):
    runs, _ = trained_stages
    policy = {"model": "policy_mobilenet_v2_tiny", "hidden_size": 32, "input_size": 32}
    with pytest.raises(CheckpointError, match="is a 'fp'-stage checkpoint; expected 'ap'"):
        train_in_process(_cfg("policy", tiny_videos, policy=policy, init={"backbone_checkpoint": str(runs / "fp")}),
                  tmp_path / "x", printer=QUIET)
    with pytest.raises(CheckpointError, match=r"quant.bit_widths \[32, 4\] differs from the family \[32, 4, 2\]"):
        train_in_process(_cfg("policy", tiny_videos, policy=policy, quant={"bit_widths": [32, 4]},
                       init={"backbone_checkpoint": str(runs / "ap")}), tmp_path / "y", printer=QUIET)
    with pytest.raises(CheckpointError, match="policy_pretrain"):
        train_in_process(_cfg("policy", tiny_videos, policy=policy, init={"backbone_checkpoint": str(runs / "ap"),
                                                                   "policy_backbone_checkpoint": str(runs / "fp")}),
                  tmp_path / "z", printer=QUIET)
    with pytest.raises(CheckpointError, match="needs its full-precision twin 'resnet18'"):
        train_in_process(_cfg("ap", tiny_videos, model={"name": "ap_resnet18"},
                              init={"backbone_checkpoint": str(runs / "fp")}), tmp_path / "w", printer=QUIET)
    with pytest.raises(ConfigError, match="inputs not ready"):
        train_in_process(_cfg("policy", tiny_videos, policy=policy), tmp_path / "v", printer=QUIET)


def test_any_precision_loss_is_the_sum_over_widths():
    model = create_model("ap_resnet_tiny", num_classes=5)
    teacher = create_model("resnet_tiny", num_classes=5).eval()
    task = AnyPrecisionTask(model, (32, 4, 2), teacher)
    task.train(True)
    assert not task.module.teacher.training and task.module.model.training
    video, labels = torch.randn(2, 3, 3, 32, 32), torch.tensor([1, 4])
    out = task.module(video)
    losses = task.losses(out, labels)
    expected = sum(F.cross_entropy(z, labels) + soft_cross_entropy(z, out["teacher"]) for z in out["logits_per_width"])
    assert torch.allclose(losses["loss"], expected) and set(losses) == {"loss", "loss/b32", "loss/b4", "loss/b2"}
    losses["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for n, p in model.named_parameters()
               if "alpha" not in n or n.endswith((".32", ".4", ".2")))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoints_refuse_foreign_and_pickled_files(tmp_path):
    import pickle

    save_checkpoint(tmp_path / "c.pt", {"stage": "fp", "epoch": 1})
    assert load_checkpoint(tmp_path / "c.pt", stages=("fp",))["epoch"] == 1
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="a plain weight file"):
        load_checkpoint(tmp_path / "weights.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": "videoiq-ckpt/1", "x": Evil()}))
    with pytest.raises(CheckpointError, match="not a readable videoiq checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt", what="init.backbone_checkpoint")


@pytest.mark.slow
def test_eval_scores_every_kind_of_checkpoint(trained_stages, tiny_videos):
    from videoiq.train.evaluate import evaluate_checkpoint

    runs, metrics = trained_stages

    def ev(path, **eval_section):
        cfg = config_from_dict({"stage": "eval", "data": {"dataset": "custom", "root": str(tiny_videos),
                                                          "num_frames": 4, "input_size": 32, "batch_size": 8,
                                                          "num_workers": 0},
                                "eval": {"checkpoint": str(path), **eval_section}})
        return evaluate_checkpoint(cfg, printer=QUIET)

    fp = ev(runs / "fp")
    assert fp["metrics"]["val/top1"] == pytest.approx(metrics["fp"]["val/top1"])  # same clips, same model
    # results live in the run folder, outside any checkpoint folder: eval/epoch<N>-<checkpoint id>/<mode>.json
    assert Path(fp["file"]).parent.parent == runs / "fp" / "eval" and Path(fp["file"]).name == "val.json"
    assert Path(fp["file"]).parent.name.startswith("epoch2-")
    assert json.loads(Path(fp["file"]).read_text())["metrics"] == fp["metrics"]
    ap = ev(runs / "ap")["metrics"]
    assert ap["val/b32/top1"] == pytest.approx(metrics["ap"]["val/b32/top1"])
    assert ap["val/b32/gflops"] > ap["val/b4/gflops"] > ap["val/b2/gflops"]
    kinds = {k.split("/")[-1] for k in ap if k.startswith("val/b2/frames/")}
    assert kinds <= {"colour", "mark", "faint"} and "colour" in kinds  # per frame kind, from val.frame_kinds.json
    argmax = ev(runs / "policy")
    assert argmax["decisions"] == "argmax"
    assert argmax["metrics"]["val/gflops"] == pytest.approx(metrics["policy"]["val/gflops"])
    per_kind = {k for k in argmax["metrics"] if k.count("/") == 3 and k.startswith("val/usage/")}
    assert {k.split("/")[2] for k in per_kind} >= {"colour"}
    assert Path(argmax["file"]).name == "val-argmax.json"
    assert argmax["decisions_picture"] == str(Path(argmax["file"]).parent / "decisions-val-argmax.png")
    assert Path(argmax["decisions_picture"]).is_file()
    sampled = ev(runs / "policy", decisions="sampled", num_samples=3)
    assert set(sampled["spread"]) == set(sampled["metrics"])
    # every sampled run scores the same 8 videos: a figure the decisions cannot move has no spread
    assert sampled["metrics"]["val/videos"] == 8.0 and sampled["spread"]["val/videos"] == 0.0
    # the sampled results sit beside the argmax ones and never replace them
    assert Path(sampled["file"]) == Path(argmax["file"]).parent / "val-sampled.json"
    assert json.loads(Path(sampled["file"]).read_text())["spread"] == sampled["spread"]
    assert json.loads(Path(argmax["file"]).read_text())["metrics"] == argmax["metrics"]
    assert sampled["decisions_picture"].endswith("decisions-val-sampled.png")
    # the integer engine: the same decisions, top-1 within a video of the float model's, in a file of its own
    integer = ev(runs / "policy", engine="int8")
    assert integer["engine"] == "int8" and Path(integer["file"]).name == "val-argmax-int8.json"
    assert integer["metrics"]["val/gflops"] == argmax["metrics"]["val/gflops"]
    assert abs(integer["metrics"]["val/top1"] - argmax["metrics"]["val/top1"]) <= 100 / 8
    assert json.loads(Path(argmax["file"]).read_text())["metrics"] == argmax["metrics"]
    ap_int8 = ev(runs / "ap", engine="int8")["metrics"]
    assert ap_int8["val/b32/top1"] == pytest.approx(ap["val/b32/top1"])
    with pytest.raises(CheckpointError, match="eval.engine: int8 runs the quantized widths .* is a fp checkpoint"):
        ev(runs / "fp", engine="int8")
    with pytest.raises(ConfigError, match="eval.checkpoint: .*nothing.pt' does not exist"):
        ev(runs / "nothing.pt")
    with pytest.raises(CheckpointError, match="eval.checkpoint: .* has format"):
        torch.save({"conv1.weight": torch.zeros(1)}, runs / "plain.pt")
        ev(runs / "plain.pt")


def test_batch_norm_recalibration_averages_the_statistics_of_the_final_weights():
    from videoiq.train.loop import recalibrate_batch_norm
    from videoiq.train.tasks import FPTask

    model = create_model("resnet_tiny", num_classes=3)
    task = FPTask(model)
    batches = [{"video": torch.randint(0, 255, (2, 2, 3, 32, 32), dtype=torch.uint8),
                "label": torch.zeros(2, dtype=torch.long), "index": torch.arange(2),
                "valid": torch.ones(2, dtype=torch.bool)} for _ in range(3)]
    from videoiq.data.transforms import normalize

    with torch.no_grad():  # the stem BN's input of each batch, from the weights as they are
        means = [model.conv1(normalize(b["video"]).flatten(0, 1)).mean(dim=(0, 2, 3)) for b in batches[:2]]
    model.bn1.running_mean.fill_(5.0)
    used = recalibrate_batch_norm(task, iter(batches), 2, torch.device("cpu"))
    assert used == 2 and model.bn1.momentum == 0.1  # two batches, and the momentum is given back
    assert torch.allclose(model.bn1.running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    with pytest.raises(ConfigError, match="optim.bn_recalibration: the policy stage's backbone is frozen"):
        config_from_dict({"stage": "policy", "optim": {"bn_recalibration": 4}})


@pytest.mark.slow
def test_bf16_autocast_and_channels_last_train_and_hand_off(trained_stages, tiny_videos, tmp_path):
    runs, _ = trained_stages
    speed = {"amp": "bf16", "channels_last": True}
    metrics = train_in_process(_cfg("ap", tiny_videos, model={"name": "ap_resnet_tiny"}, speed=speed,
                             init={"backbone_checkpoint": str(runs / "fp")}), tmp_path / "ap", printer=QUIET)
    assert math.isfinite(metrics["train/loss"]) and metrics["val/videos"] == 8.0
    assert metrics["val/b2/top1"] in TOP1_OF_8
    ckpt = load_checkpoint(tmp_path / "ap")
    conv = ckpt["models"]["model"]["state_dict"]["layer1.0.conv2.weight"]
    assert conv.dtype == torch.float32 and conv.is_contiguous(memory_format=torch.channels_last)
    model = create_model("ap_resnet_tiny", **ckpt["models"]["model"]["kwargs"])
    model.load_state_dict(ckpt["models"]["model"]["state_dict"])  # an NCHW model takes the weights as they are


def test_all_widths_step_computes_the_shared_stem_once_with_the_same_result():
    """The ap step computes the stem and each conv's weight normalisation once for every width; the
    logits, every gradient and the stem BN's running statistics equal one full forward per width."""
    import copy

    from videoiq.quant import bit_width

    torch.manual_seed(0)
    model = create_model("ap_resnet_tiny", num_classes=5, dropout=0.0)
    naive = copy.deepcopy(model)
    task = AnyPrecisionTask(model, (32, 4, 2), None)
    task.train(True)
    naive.train(True)
    video = torch.randn(2, 3, 3, 32, 32)
    weights = torch.randn(3, 2, 5)
    shared = task.module(video)["logits_per_width"]
    (shared * weights).sum().backward()
    per_width = []
    for bits in (32, 4, 2):
        with bit_width(naive, bits):
            per_width.append(naive(video))
    (torch.stack(per_width) * weights).sum().backward()
    assert torch.allclose(shared, torch.stack(per_width), atol=1e-5)
    grads = dict(naive.named_parameters())
    for name, p in model.named_parameters():
        assert (p.grad is None) == (grads[name].grad is None), name
        if p.grad is not None:
            # float32 sums in another order: compare at the gradient's own scale (the stem's reach ~10)
            scale = float(grads[name].grad.abs().max())
            assert torch.allclose(p.grad, grads[name].grad, atol=1e-5 * max(scale, 1.0), rtol=1e-4), name
    for key, value in naive.bn1.state_dict().items():  # three widths' worth of stem BN updates
        assert torch.allclose(model.bn1.state_dict()[key].float(), value.float(), atol=1e-6), key
