"""Tune sweeps of the policy stage on a real Ray cluster: Pareto report, plot, wandb, restore, retries."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from videoiq.config import ConfigError
from videoiq.dispatch import run_config
from videoiq.sweeps.report import Report, TrialRecord, pareto_fronts, read_state
from videoiq.sweeps.spec import load_sweep

from helpers import QUIET
from wandb_offline import read_runs

ROOT = Path(__file__).resolve().parents[1]


def _write_sweep(tmp_path, trained_stages, tiny_videos, name, search_space, **extra):
    """A policy base config on the session's ap/policy_pretrain checkpoints and a sweep file over it."""
    runs, _ = trained_stages
    base = {"stage": "policy",
            "data": {"dataset": "custom", "root": str(tiny_videos), "num_frames": 4, "input_size": 32,
                     "batch_size": 8, "num_workers": 0},
            "policy": {"model": "policy_mobilenet_v2_tiny", "hidden_size": 32, "input_size": 16},
            "init": {"backbone_checkpoint": str(runs / "ap" / "checkpoint.pt"),
                     "policy_backbone_checkpoint": str(runs / "pp" / "checkpoint.pt")},
            "optim": {"epochs": 2, "policy_lr": 0.01, "policy_backbone_lr": 0.001},
            "ray": {"num_workers": 0}, "logging": {"log_every": 100}}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(base))
    sweep = {"base": str(tmp_path / "policy.yaml"), "name": name, "storage_path": str(tmp_path / "tune"),
             "search_space": search_space, "metric": "val/mAP", "max_concurrent_trials": 1, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _tune_results(experiment):
    """Each trial's last result as Tune itself recorded it (independent of videoiq's report)."""
    from ray import tune

    def _trial(config):  # same name as videoiq's trainable; only read here, never run
        raise AssertionError("not run")

    grid = tune.Tuner.restore(str(experiment), trainable=_trial).get_results()
    return {r.metrics["trial_id"]: r.metrics for r in grid if r.metrics}


@pytest.mark.ray
def test_a_killed_sweep_resumes_and_reports_its_pareto_front(ray_local, trained_stages, tiny_videos, tmp_path):
    grid = [[32, 4, 2], [32], [4], [2]]  # distinct costs: a front to find
    path = _write_sweep(tmp_path, trained_stages, tiny_videos, "widths",
                        {"policy.precisions": {"grid": grid}}, searcher="grid")
    experiment = tmp_path / "tune" / "widths"
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "WANDB_MODE": "offline",
           "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "launch/tune.py", "--sweep", str(path)]

    # 1. kill the sweep driver once the first trial has finished (trials run one at a time)
    driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240

    def finished():
        return [p.parent for p in experiment.glob("trials/*/trial.json")
                if read_state(p.parent)["status"] == "finished"]

    while not finished():
        assert driver.poll() is None and time.time() < deadline, "no trial finished"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = {d.name: (d / "metrics.jsonl").read_text() for d in finished()}
    assert 1 <= len(before) < len(grid)

    # 2. the same command continues the sweep; finished trials are not trained again
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "continuing the interrupted sweep" in log
    states = {d.name: read_state(d) for d in (experiment / "trials").iterdir()}
    assert len(states) == len(grid) and all(s["status"] == "finished" for s in states.values())
    for trial, lines in before.items():  # (Tune may restart one it had not seen finish; it then trains nothing)
        assert (experiment / "trials" / trial / "metrics.jsonl").read_text() == lines

    # 3. the Pareto table matches the trials' own reports to Tune, front computed here independently
    tune_metrics = _tune_results(experiment)
    assert sorted(tune_metrics) == sorted(states)
    points = {t: (m["val/mAP"], m["val/gflops"]) for t, m in tune_metrics.items()}
    front = {t for t, p in points.items() if not any(q[0] >= p[0] and q[1] <= p[1] and q != p for q in points.values())}
    table = json.loads((experiment / "pareto.json").read_text())
    assert {t["trial_id"] for t in table["front"]} == front
    for row in table["trials"]:
        assert row["metrics"]["val/mAP"] == pytest.approx(points[row["trial_id"]][0])
        assert row["metrics"]["val/gflops"] == pytest.approx(points[row["trial_id"]][1])
        assert row["params"]["policy.precisions"] in grid and Path(row["checkpoint"]).is_file()
    assert [r["front"] for r in table["trials"]] == sorted(r["front"] for r in table["trials"])  # front first
    assert {r["name"] for r in table["references"]} == {"fp", "ap 32-bit", "ap 4-bit", "ap 2-bit"}
    csv_rows = (experiment / "pareto.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(grid) and csv_rows[0].startswith("front,trial,status")
    assert "front  trial" in log and "ref  fp" in log  # the table printed at the end

    # 4. the plot, and wandb: one run per trial in the sweep's group, plus the summary run
    from PIL import Image

    with Image.open(experiment / "pareto.png") as png:
        assert png.format == "PNG" and png.size[0] > 400
    runs = [r for r in read_runs(experiment) if r.name]
    per_trial = {r.name for r in runs if r.job_type == "policy"}
    assert per_trial == set(states) and {r.group for r in runs} == {"widths"}
    summary = [r for r in runs if r.name == "pareto"]
    assert summary and summary[-1].summary["pareto/nrows"] == len(grid) and summary[-1].summary["front"] == len(front)


@pytest.mark.ray
def test_a_crashing_trial_is_retried_and_reported(ray_local, trained_stages, tiny_videos, tmp_path, capfd):
    from videoiq.ray.tune import run_sweep

    # a policy learning rate of 1e30 makes the loss NaN in epoch 2: that trial fails, twice
    path = _write_sweep(tmp_path, trained_stages, tiny_videos, "lr", {"optim.policy_lr": {"grid": [0.01, 1e30]}},
                        searcher="grid", max_failures=1)
    lines = []
    report = run_sweep(load_sweep(path), run_config, printer=lines.append)
    by_lr = {t.params["optim.policy_lr"]: t for t in report.trials}
    bad, good = by_lr[1e30], by_lr[0.01]
    assert (good.status, good.attempts, good.epochs) == ("finished", 1, 2)
    assert (bad.status, bad.attempts) == ("error", 2) and "epoch 2 step 1: the loss is nan" in bad.error
    assert bad.epochs == 1 and bad.metrics["epoch"] == 1.0  # what it reached is still in the table
    # the cause in one line, and the trial's traceback kept in a file the line names
    log = Path(bad.error.split("(full traceback: ")[1].rstrip(")"))
    assert log.parent.parent.name == bad.trial_id and "NonFiniteLoss" in log.read_text()
    assert any(f"error in {bad.trial_id} (after 2 attempts): policy: epoch 2 step 1: the loss is nan" in line
               for line in lines)
    # the terminal: each trial's own lines after its id, none folded by Ray; no Tune tables or Ray tracebacks
    for trial in (good, bad):
        epochs = [line for line in lines if line.startswith(f"trial {trial.trial_id}: policy: epoch=")]
        assert len(epochs) >= (2 if trial is good else 1), "\n".join(lines)
    assert not any("[repeated" in line for line in lines)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "Configuration for experiment" not in out + err, out + err
    # the report rebuilds from the folder alone
    (tmp_path / "tune" / "lr" / "pareto.csv").unlink()
    done = subprocess.run([sys.executable, "-m", "videoiq", "tune", "report", str(tmp_path / "tune" / "lr")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and (tmp_path / "tune" / "lr" / "pareto.csv").is_file(), done.stderr
    assert report.table() in done.stdout
    missing = subprocess.run([sys.executable, "-m", "videoiq", "tune", "report", str(tmp_path)], capture_output=True,
                             text=True, cwd=ROOT)
    assert missing.returncode == 2 and "not a videoiq sweep experiment" in missing.stderr


def test_pareto_fronts():
    points = [(80, 10), (70, 5), (60, 5), (80, 12), (90, 20), (70, 5)]
    assert pareto_fronts(points) == [0, 0, 1, 1, 0, 0]


def test_the_table_shows_overall_usage_and_leaves_per_kind_usage_to_the_csv():
    metrics = {"val/top1": 98.75, "val/gflops": 0.0094, "val/usage/32bit": 26.0, "val/usage/skip1": 18.0,
               "val/usage/faint/32bit": 88.0, "val/usage/blank/skip1": 63.0}
    trial = TrialRecord("t0", "finished", 1, {"loss.efficiency_weight": 0.05}, 30, metrics, "")
    report = Report("x", "val/top1", [trial], [], {})
    head, row = report.table().splitlines()[0].split(), report.table().splitlines()[2].split()
    assert head[-3:] == ["32bit", "skip1", "loss.efficiency_weight"] and row[-3:] == ["26%", "18%", "0.05"]
    assert "val/usage/faint/32bit" in report.columns()[0]


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ({"search_space": {"loss.efficiency_weight": {"unifrom": [0, 1]}}},
     "unknown domain 'unifrom' (did you mean 'uniform'?)"),
    ({"search_space": {"loss.efficiency_weigth": {"uniform": [0, 1]}}}, "unknown key 'loss.efficiency_weigth'"),
    ({"search_space": {"loss.efficiency_weight": {"uniform": [-1, 1]}}}, "value -1 is not valid for the base config"),
    ({"search_space": {"loss.efficiency_weight": {"loguniform": [0, 1]}}}, "low must be > 0"),
    ({"searcher": "optuna", "search_space": {"optim.policy_lr": {"grid": [0.1, 0.01]}}},
     "grid domains need searcher random or grid"),
    ({"searcher": "optuna", "search_space": {"policy.precisions": {"choice": [[32, 4], [4]]}}},
     "optuna chooses among numbers or strings"),
    ({"scheduler": {"asha": {"grace_period": 9}}}, "grace_period: expected an integer in [1, optim.epochs=2]"),
    ({"metric": "accuracy"}, "metric: expected one of val/mAP, val/top1"),
    ({"num_sample": 3}, "unknown key 'num_sample' (did you mean 'num_samples'?)"),
    ({"base": "missing.yaml"}, "base: 'missing.yaml' does not exist"),
])
def test_bad_sweep_files_are_refused_naming_the_key(tmp_path, trained_stages, tiny_videos, change, message):
    path = _write_sweep(tmp_path, trained_stages, tiny_videos, "s", {"loss.balance_weight": {"uniform": [0.0, 1.0]}})
    data = {**yaml.safe_load(path.read_text()), **change}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="invalid sweep") as info:
        load_sweep(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_every_shipped_sweep_loads(monkeypatch):
    monkeypatch.chdir(ROOT)
    files = sorted((ROOT / "tune_configs").glob("*.yaml"))
    assert files
    for f in files:
        sweep = load_sweep(f)
        assert sweep.space and sweep.metric in ("val/mAP", "val/top1")


@pytest.mark.ray
def test_resuming_with_another_sweep_is_refused(ray_local, trained_stages, tiny_videos, tmp_path):
    from videoiq.ray.tune import run_sweep

    path = _write_sweep(tmp_path, trained_stages, tiny_videos, "same", {"loss.balance_weight": {"grid": [0.5]}},
                        searcher="grid", fixed={"optim.epochs": 1})
    run_sweep(load_sweep(path), run_config, printer=QUIET)
    data = yaml.safe_load(path.read_text())
    data["search_space"] = {"loss.balance_weight": {"grid": [0.7]}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="was started by a different sweep .differs in search_space"):
        run_sweep(load_sweep(path), run_config, printer=QUIET)
