"""A stage on real Ray Train workers (2, gloo DDP): checkpoint hand-off to the next stage and resume."""
import json

from test_train import QUIET, _cfg

from videoiq.train.checkpoint import load_checkpoint
from videoiq.train.stage import run_stage


def test_fp_on_two_workers_hands_off_and_resumes(ray_local, tiny_videos, tmp_path):
    from videoiq.train.worker import run_stage_on_ray

    ray_cfg = {"num_workers": 2, "storage_path": str(tmp_path / "runs"), "name": "fp_tiny"}
    cfg = _cfg("fp", tiny_videos, model={"name": "resnet_tiny"}, ray=ray_cfg)
    path, metrics = run_stage_on_ray(cfg, printer=QUIET)
    ckpt = load_checkpoint(path, stages=("fp",))
    assert ckpt["epoch"] == 1 and metrics["epoch"] == 1.0 and metrics["val/videos"] == 8.0  # nothing dropped
    assert metrics["train/videos"] == 16.0  # both shards together saw the whole training set once
    # the Ray checkpoint is the next stage's input
    ap = run_stage(_cfg("ap", tiny_videos, model={"name": "ap_resnet_tiny"}, init={"backbone_checkpoint": path}),
                   tmp_path / "ap", printer=QUIET)
    assert ap["epoch"] == 1.0
    # the same command with more epochs resumes after epoch 1
    longer = _cfg("fp", tiny_videos, model={"name": "resnet_tiny"}, ray=ray_cfg, optim={"epochs": 2})
    path2, metrics2 = run_stage_on_ray(longer, printer=QUIET)
    assert load_checkpoint(path2)["epoch"] == 2 and metrics2["epoch"] == 2.0
    lines = [json.loads(x) for x in (tmp_path / "runs" / "fp_tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1.0, 2.0]
    assert lines[0] == metrics  # epoch 1 was not re-run (its timings would differ), only epoch 2 was added
