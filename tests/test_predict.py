"""`videoiq predict`: a policy checkpoint on video files, with conditional execution."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from videoiq.data.codec import VideoDecodeError
from videoiq.flops import video_cost
from videoiq.predict import predict_videos
from videoiq.train.checkpoint import CheckpointError, load_checkpoint, videoiq_from_checkpoint

pytestmark = pytest.mark.slow  # every test reads the session's trained_stages

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
    for r, path in zip(results, videos, strict=True):
        assert r["video"] == path and len(r["actions"]) == len(r["sampled_frames"]) == 4
        assert set(r["actions"]) <= set(model.actions) and r["top"][0]["class"] in ckpt["extra"]["classes"]
        usage = {a: r["actions"].count(a) / 4 for a in model.actions}
        assert r["gflops"] == pytest.approx(cost.gmacs(usage).total)
    text = subprocess.run([sys.executable, "-m", "videoiq", "predict", str(runs / "policy"), videos[0]],
                          capture_output=True, text=True, cwd=ROOT).stdout
    assert text.startswith(f"{videos[0]}: {results[0]['top'][0]['class']} (")
    assert "  action " in text and "GFLOPs per video" in text


def test_predict_on_the_integer_engine_takes_the_same_decisions(trained_stages, tiny_videos):
    runs, _ = trained_stages
    videos = sorted(str(p) for p in (tiny_videos / "videos").rglob("*.mp4"))[:2]
    results = {}
    for engine in ("float", "int8"):
        done = subprocess.run([sys.executable, "-m", "videoiq", "predict", str(runs / "policy"), *videos, "--json",
                               "--engine", engine], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        results[engine] = json.loads(done.stdout)
    for f, i in zip(results["float"], results["int8"], strict=True):
        assert f["actions"] == i["actions"] and f["gflops"] == i["gflops"]  # the policy runs in float either way
        probs = {t["class"]: t["probability"] for t in f["top"]}
        assert all(abs(probs.get(t["class"], 0.0) - t["probability"]) < 0.05 for t in i["top"])
    done = subprocess.run([sys.executable, "-m", "videoiq", "predict", str(runs / "policy"), videos[0], "--engine",
                           "int8", "--device", "cuda"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_predict_refuses_other_checkpoints_and_unreadable_videos(trained_stages, tiny_videos, tmp_path):
    runs, _ = trained_stages
    video = next((tiny_videos / "videos").rglob("*.mp4"))
    with pytest.raises(CheckpointError, match="is a 'ap'-stage checkpoint; expected 'policy'"):
        predict_videos(str(runs / "ap"), [str(video)], printer=None)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    broken, missing = str(tmp_path / "broken.mp4"), str(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="cannot open"):
        predict_videos(str(runs / "policy"), [broken], printer=None)
    # every readable video is scored, each bad one is a line of its own, and the exit status says so
    done = subprocess.run([sys.executable, "-m", "videoiq", "predict", str(runs / "policy"), broken, str(video),
                           missing, "--json"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert [r["video"] for r in json.loads(done.stdout)] == [str(video)]
    errors = [line for line in done.stderr.splitlines() if line.startswith("videoiq: error: ")]
    assert len(errors) == 2 and "broken.mp4: cannot open" in errors[0] and "missing.mp4: no such file" in errors[1]
    assert "2 of 3 videos could not be read" in done.stderr


def test_predict_says_not_a_video_for_images_and_text(trained_stages, tmp_path):
    """FFmpeg opens a PNG, a JPEG and a text file as one-frame 'videos'; predict must not classify them."""
    runs, _ = trained_stages
    Image.new("RGB", (48, 48), (200, 30, 30)).save(tmp_path / "frame.png")
    Image.new("RGB", (48, 48), (30, 200, 30)).save(tmp_path / "frame.jpg")
    (tmp_path / "list.txt").write_text("hello world\n" * 100)
    for name in ("frame.png", "frame.jpg", "list.txt"):
        with pytest.raises(VideoDecodeError, match=rf"{name}: not a video \(FFmpeg reads it as "):
            predict_videos(str(runs / "policy"), [str(tmp_path / name)], printer=None)


@pytest.mark.parametrize("device, message", [("gpu", "expected cpu, cuda or cuda:<index>"),
                                             ("cuda:99", "cuda")])
def test_predict_refuses_a_device_it_cannot_use_in_one_line(trained_stages, tiny_videos, device, message):
    runs, _ = trained_stages
    video = next((tiny_videos / "videos").rglob("*.mp4"))
    done = subprocess.run([sys.executable, "-m", "videoiq", "predict", str(runs / "policy"), str(video),
                           "--device", device], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.startswith(f"videoiq: error: --device '{device}'"), done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_predict_strip_draws_each_video_with_its_actions(trained_stages, tiny_videos, tmp_path):
    from PIL import Image

    from videoiq.strips import CELL, GAP, LABEL_H, TITLE_H, action_colour

    runs, _ = trained_stages
    videos = sorted(str(p) for p in (tiny_videos / "videos").rglob("*.mp4"))[:3]
    out = tmp_path / "strip.png"
    results = predict_videos(str(runs / "policy"), videos, printer=None, strip=str(out))
    image = Image.open(out).convert("RGB")
    row_h = TITLE_H + CELL + LABEL_H + GAP
    assert image.size == (4 * (CELL + GAP) + GAP, 3 * row_h + GAP)  # a row per video, a cell per sampled frame
    for r, result in enumerate(results):
        for c, action in enumerate(result["actions"]):
            # the label box under each frame has the colour of the action the policy took there
            x, y = GAP + c * (CELL + GAP) + CELL - 3, GAP + r * row_h + TITLE_H + CELL + LABEL_H - 3
            assert image.getpixel((x, y)) == action_colour(action)


def test_predict_warns_once_per_video_that_decodes_short(trained_stages, tmp_path, capsys):
    from test_data_decode import FRAMES, damaged_set

    from videoiq.cli import main

    runs, _ = trained_stages
    root = damaged_set(tmp_path)
    assert main(["predict", str(runs / "policy"), str(root / "whole.mp4"), str(root / "half.mp4"), "--json"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [r["decode"]["decoded_frames"] < FRAMES for r in results] == [False, True]
    warnings = [line for line in captured.err.splitlines() if line.startswith("videoiq: warning: ")]
    assert len(warnings) == 1 and "half.mp4: decodes short: decoded" in warnings[0]
    assert f"of {FRAMES} frames" in warnings[0] and "% lost" in warnings[0]
