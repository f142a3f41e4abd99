"""The whole pipeline on real Ray Train workers (2-worker DDP for fp, ap and policy): hand-off by
checkpoint, resume after the driver is killed mid-run, and final numbers equal to what was logged; seeded runs
repeat exactly; a user's error in a worker reaches the driver as its own one-line message."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from videoiq.dispatch import run_config
from videoiq.errors import RemoteError, error_line, run_guarded
from videoiq.train.checkpoint import CheckpointError, load_checkpoint
from videoiq.train.lineage import LineageError

from helpers import QUIET, copy_data, garble_record, stage_config
from wandb_offline import read_runs

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "launch" / "configs" / "demo"
WORKERS = {"fp": 2, "ap": 2, "policy_pretrain": 1, "policy": 2}
EPOCHS = {"fp": 3, "ap": 1, "policy_pretrain": 1, "policy": 2}


def _configs(tmp_path, data_root):
    """The demo configs, resized for the tiny set (4 frames at 32 px), as files in ``tmp_path``."""
    out = {}
    for stage in ("fp", "ap", "policy_pretrain", "policy", "eval"):
        cfg = yaml.safe_load((DEMO / f"{stage}.yaml").read_text())
        cfg["data"].update(root=str(data_root), num_frames=4, input_size=32, batch_size=8)
        cfg["run"].update(storage_path=str(tmp_path / "runs"))
        if stage in WORKERS:
            cfg["ray"].update(num_workers=WORKERS[stage], cpus_per_worker=1)
            cfg["optim"].update(epochs=EPOCHS[stage], val_every=1)  # every epoch's line carries its validation
            cfg["logging"]["log_every"] = 1
        out[stage] = tmp_path / f"{stage}.yaml"
        out[stage].write_text(yaml.safe_dump(cfg))
    return out


def _readable(path):
    """False for a checkpoint whose copy the kill cut short."""
    try:
        load_checkpoint(path)
        return True
    except CheckpointError:
        return False


def _close(a, b):
    return a == pytest.approx(b, rel=1e-6, abs=1e-9)


def test_pipeline_on_ray_resumes_after_a_killed_driver(ray_local, tiny_videos, tmp_path):
    files = _configs(tmp_path, tiny_videos)
    command = [sys.executable, "launch/pipeline.py", *[a for s, f in files.items()
                                                       for a in (f"--{s.replace('_', '-')}", str(f))]]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "WANDB_MODE": "offline",
           "PYTHONUNBUFFERED": "1"}
    runs = tmp_path / "runs"

    # 1. start the pipeline and SIGKILL its driver once fp has a checkpoint (after epoch 1 or 2 of 3)
    driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (runs / "fp" / "checkpoint_manager_snapshot.json").exists():
        assert driver.poll() is None and time.time() < deadline, "the pipeline never checkpointed fp"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    written = {load_checkpoint(p)["epoch"] for p in (runs / "fp").glob("checkpoint_*/checkpoint.pt") if _readable(p)}

    # 2. the same command resumes fp after that checkpoint and runs everything else
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    # the log is the stages' own lines and the result: nothing of Ray Data, Train or Tune in between
    lines = log.splitlines()
    table = next(i for i, line in enumerate(lines) if line.startswith("model "))
    said = ("==> ", "fp: ", "ap: ", "policy_pretrain: ", "policy: ", "eval: ", "videoiq: ")
    assert all(line.startswith(said) for line in lines[:table]), "\n".join(line for line in lines[:table]
                                                                        if not line.startswith(said))
    assert [line for line in lines[:table] if line.startswith("videoiq: ")] == [
        line for line in lines[:table] if re.match(r"videoiq: \S+checkpoint.pt: loaded \d+ tensors", line)]
    assert lines[-1].startswith("summary: ")
    resumed = [line for line in log.splitlines() if f"fp: resuming {runs / 'fp'} after epoch" in line]
    assert resumed, log[-4000:]
    resumed_after = int(resumed[0].rsplit(" ", 1)[-1])  # the last checkpoint Ray had registered
    assert resumed_after in written and 1 <= resumed_after < EPOCHS["fp"]
    fp_lines = [json.loads(x) for x in (runs / "fp" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in fp_lines] == [1.0, 2.0, 3.0]  # each epoch once, none lost or repeated
    assert all(x["train/videos"] == 16.0 and x["val/videos"] == 8.0 for x in fp_lines)  # 2 shards cover the set

    # 3. hand-off: each stage was initialised from the checkpoint the previous stage wrote
    summary = json.loads((runs / "pipeline_summary.json").read_text())
    paths = {stage: entry["path"] for stage, entry in summary["checkpoints"].items()}
    ckpts = {stage: load_checkpoint(path) for stage, path in paths.items()}
    assert ckpts["ap"]["config"]["init"]["backbone_checkpoint"] == paths["fp"]
    assert ckpts["policy"]["config"]["init"]["backbone_checkpoint"] == paths["ap"]
    assert ckpts["policy"]["config"]["init"]["policy_backbone_checkpoint"] == paths["policy_pretrain"]
    # ... and recorded it: the lineage names each input checkpoint by its id
    assert ckpts["policy"]["lineage"]["inputs"]["init.backbone_checkpoint"]["id"] == ckpts["ap"]["id"]
    assert ckpts["ap"]["lineage"]["inputs"]["init.backbone_checkpoint"]["id"] == ckpts["fp"]["id"]
    assert {s: c["epoch"] for s, c in ckpts.items()} == EPOCHS
    for key, value in ckpts["ap"]["models"]["model"]["state_dict"].items():  # the frozen backbone, unchanged
        assert (ckpts["policy"]["models"]["model"]["state_dict"][key] == value).all(), key

    # 4. the final numbers are the ones logged: eval JSON = pipeline summary = wandb; training too
    wandb_runs = {}
    for run in read_runs(runs):  # a resumed stage has an offline run per attempt; keep the finished one
        if run.name and run.summary.get("epoch", 0) >= wandb_runs.get(run.name, run).summary.get("epoch", 0):
            wandb_runs[run.name] = run
    assert {r.group for r in wandb_runs.values()} == {"/".join(runs.parts[-2:])}
    policy_eval = json.loads(Path(summary["eval"]["policy"]["file"]).read_text())
    assert Path(policy_eval["file"]).parent.parent == runs / "policy" / "eval"  # not in a checkpoint_* folder
    assert policy_eval["metrics"] == summary["eval"]["policy"]["metrics"]
    logged = wandb_runs["eval-policy-val-argmax"].summary
    assert all(_close(logged[k], v) for k, v in policy_eval["metrics"].items())
    assert {"val/top1", "val/mAP", "val/gflops", "val/usage/32bit", "val/usage/skip1"} <= set(policy_eval["metrics"])
    assert f"{policy_eval['metrics']['val/gflops']:13.4f}" in summary["table"] and summary["table"] in log
    for stage in ("fp", "ap", "policy"):
        last = json.loads((runs / stage / "metrics.jsonl").read_text().splitlines()[-1])
        assert last == ckpts[stage]["metrics"]
        assert all(_close(wandb_runs[stage].summary[k], v) for k, v in last.items()), stage
    history = [row for run in read_runs(runs / "policy") for row in run.history if "temperature" in row]
    assert [row["temperature"] for row in history] == pytest.approx([5.0, 5.0 * 0.956])

    # 5. training fp further prunes its old checkpoint folders (here ray.num_to_keep: 1); nothing the pipeline
    # wrote goes with them, and the summary says which checkpoint is gone
    fp_cfg = yaml.safe_load(files["fp"].read_text())
    fp_cfg["optim"]["epochs"] = EPOCHS["fp"] + 1
    files["fp"].write_text(yaml.safe_dump(fp_cfg))
    from videoiq.config import load_config

    run_config(load_config(str(files["fp"]), ["ray.num_to_keep=1"]), printer=QUIET)
    assert not Path(summary["checkpoints"]["fp"]["path"]).exists()
    for name, ev in summary["eval"].items():
        assert json.loads(Path(ev["file"]).read_text())["metrics"] == ev["metrics"], name
    after = json.loads((runs / "pipeline_summary.json").read_text())["checkpoints"]
    assert {s: e["kept"] for s, e in after.items()} == {"fp": False, "ap": True, "policy_pretrain": True,
                                                        "policy": True}
    # and ap, built on the fp of before, is no longer "nothing to do": the driver refuses it, naming why
    with pytest.raises(LineageError, match=r"^ap: .* init.backbone_checkpoint fp checkpoint \w+ after epoch 3 .* -> "
                                           r"fp checkpoint \w+ after epoch 4"):
        run_config(load_config(str(files["ap"]), [f"init.backbone_checkpoint={runs / 'fp'}"]), printer=QUIET)


def test_seeded_runs_on_ray_repeat_exactly_and_relative_paths_reach_the_workers(ray_local, tiny_videos, tmp_path):
    from videoiq.dispatch import run_config

    runs = []
    for name, workers in (("first", 2), ("again", 2), ("in_process", 0)):
        # relative to the test's working directory, which the Train workers do not share
        run = {"storage_path": os.path.relpath(tmp_path), "name": name}
        # 16 videos in batches of 6 (3 per worker): the last batch of an epoch is partial
        cfg = stage_config("fp", os.path.relpath(tiny_videos), model={"name": "resnet_tiny"}, run=run,
                           ray={"num_workers": workers},
                           optim={"epochs": 2}, data={"batch_size": 6})
        run_config(cfg, printer=QUIET)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        runs.append([{k: v for k, v in json.loads(x).items() if not k.endswith("seconds")} for x in lines])
    assert [x["epoch"] for x in runs[0]] == [1.0, 2.0]
    assert runs[0] == runs[1]  # same seed: the same clips, augmentation, batches and weights
    assert runs[0][0]["train/loss"] != runs[0][1]["train/loss"]
    # in-process and on Ray, an epoch trains on every video once: the partial last batch is kept in both
    assert [x["train/videos"] for run in runs for x in run] == [16.0] * 6


def test_a_users_error_in_a_train_worker_is_its_own_line_with_the_traceback_kept(ray_local, tiny_videos, tmp_path,
                                                                                   trained_stages, capsys):
    """A garbled training record (read by a Ray Data task) and an fp checkpoint of another model (refused in
    the worker as it builds the ap stage): the driver raises each worker's own message, one line, not Ray's
    wrapping of it; the worker's traceback is kept in <run>/errors/, and the launcher's handler prints the
    one line and exits 2."""
    runs = tmp_path / "runs"

    def fp(root, name, epochs=1):
        return stage_config("fp", root, model={"name": "resnet_tiny"}, optim={"epochs": epochs},
                            run={"storage_path": str(runs), "name": name}, ray={"num_workers": 1})

    bad = copy_data(tiny_videos, tmp_path / "bad")
    key = garble_record(bad / "train.lmdb", 0)
    with pytest.raises(RemoteError) as info:
        run_config(fp(bad, "garbled"), printer=QUIET)
    e = info.value
    assert f"record '{key}': sampled frame" in e.message and "undecodable image" in e.message, e.message
    assert "\n" not in e.message and "Ray" not in e.message
    log = Path(e.log)
    assert log.parent == runs / "garbled" / "errors" and "Traceback" in log.read_text()
    def fails_as_on_ray() -> int:
        raise e

    assert run_guarded(fails_as_on_ray) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("videoiq: error: ") and "undecodable image" in err[0], err

    fp_of_another_width = trained_stages[0] / "fp"  # a resnet_tiny
    ap = stage_config("ap", tiny_videos, model={"name": "ap_resnet18"}, init={"backbone_checkpoint": str(
        fp_of_another_width)}, run={"storage_path": str(runs), "name": "ap"},
        ray={"num_workers": 1})
    with pytest.raises(RemoteError) as info:  # found by the worker, as it builds the stage
        run_config(ap, printer=QUIET)
    assert "holds a resnet_tiny; model.name 'ap_resnet18' needs its full-precision twin" in info.value.message
    assert error_line(info.value).count("\n") == 0 and Path(info.value.log).exists()
