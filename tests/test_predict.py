"""`videoiq predict`: a policy checkpoint on video files, with conditional execution."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from videoiq.flops import video_cost
from videoiq.predict import predict_videos
from videoiq.train.checkpoint import CheckpointError, load_checkpoint
from videoiq.train.evaluate import videoiq_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_predict_prints_class_timeline_and_gflops(trained_stages, tiny_videos):
    runs, _ = trained_stages
    videos = sorted(str(p) for p in (tiny_videos / "videos").rglob("*.mp4"))[:2]
    done = subprocess.run([sys.executable, "-m", "videoiq", "predict", str(runs / "policy"), *videos, "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    ckpt = load_checkpoint(runs / "policy")
    model = videoiq_from_checkpoint(ckpt, "policy")
    cost = video_cost(model.backbone, model.policy, num_frames=4, input_size=32)
    for r, path in zip(results, videos):
        assert r["video"] == path and len(r["actions"]) == len(r["sampled_frames"]) == 4
        assert set(r["actions"]) <= set(model.actions) and r["top"][0]["class"] in ckpt["extra"]["classes"]
        usage = {a: r["actions"].count(a) / 4 for a in model.actions}
        assert r["gflops"] == pytest.approx(cost.gmacs(usage).total)
    text = subprocess.run([sys.executable, "-m", "videoiq", "predict", str(runs / "policy"), videos[0]],
                          capture_output=True, text=True, cwd=ROOT).stdout
    assert text.startswith(f"{videos[0]}: {results[0]['top'][0]['class']} (") and "  action " in text and "GFLOPs per video" in text


def test_predict_refuses_other_checkpoints_and_unreadable_videos(trained_stages, tiny_videos, tmp_path):
    runs, _ = trained_stages
    video = next((tiny_videos / "videos").rglob("*.mp4"))
    with pytest.raises(CheckpointError, match="is a 'ap'-stage checkpoint; expected 'policy'"):
        predict_videos(str(runs / "ap"), [str(video)], printer=None)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    done = subprocess.run([sys.executable, "-m", "videoiq", "predict", str(runs / "policy"), str(tmp_path / "broken.mp4")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "broken.mp4: cannot open" in done.stderr and "Traceback" not in done.stderr
