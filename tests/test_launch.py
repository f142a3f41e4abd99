"""The launchers and the pipeline as a user runs them (in-process here; on Ray in test_train_ray)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from videoiq.config import ConfigError
from videoiq.runner import run_pipeline, shared_overrides

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "launch" / "configs" / "demo"
CONFIGS = {s: str(DEMO / f"{s}.yaml") for s in ("fp", "ap", "policy_pretrain", "policy", "eval")}


def test_pipeline_hands_checkpoints_on_and_prints_the_table(tiny_videos, tmp_path):
    lines = []
    overrides = [f"data.root={tiny_videos}", "data.num_frames=4", "optim.epochs=1", "ray.num_workers=0",
                 f"ray.storage_path={tmp_path}"]
    summary = run_pipeline(CONFIGS, overrides, printer=lines.append)
    assert summary["checkpoints"]["ap"] == str(tmp_path / "ap" / "checkpoint.pt")
    for row in ("full precision (fp)", "any-precision at 32 bits", "any-precision at 2 bits", "VideoIQ (argmax)"):
        assert row in summary["table"]
    saved = json.loads((tmp_path / "pipeline_summary.json").read_text())
    assert saved["table"] == summary["table"] and saved["eval"]["policy"]["metrics"]["val/videos"] == 8.0
    policy_ckpt = saved["eval"]["policy"]["checkpoint"]
    assert policy_ckpt == str(tmp_path / "policy" / "checkpoint.pt")
    # a second run finds every stage finished and trains nothing
    again = []
    run_pipeline(CONFIGS, overrides, printer=again.append)
    assert sum("nothing to do" in line for line in again) == 4


def test_shared_overrides_go_where_they_apply():
    assert shared_overrides("eval", ["optim.epochs=1", "data.root=x"]) == ["data.root=x"]
    assert shared_overrides("fp", ["optim.epochs=1", "data.root=x"]) == ["optim.epochs=1", "data.root=x"]
    with pytest.raises(ConfigError, match="no stage has a 'optm' section"):
        shared_overrides("fp", ["optm.epochs=1"])


def test_a_launcher_refuses_another_stages_config():
    done = subprocess.run([sys.executable, str(ROOT / "launch" / "fp.py"), "--config", CONFIGS["ap"]],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert "is a 'ap' config; this launcher runs the 'fp' stage" in done.stdout and "Traceback" not in done.stderr
