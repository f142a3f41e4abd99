"""`videoiq infer`: a policy checkpoint over a collection on Ray Data, Parquet rows, a summary scored as eval scores.

(Losing an actor mid-run on two nodes is in ``test_two_nodes.py``.)
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from videoiq.atomic import FolderLock
from videoiq.data.clips import VideoClipDataset, eval_loader
from videoiq.data.records import DatabaseError
from videoiq.data.shards import open_split
from videoiq.errors import UsageError
from videoiq.infer import LOCK, ResultsFolder, open_collection
from videoiq.predict import load_policy
from videoiq.ray.infer import infer_collection
from videoiq.train.checkpoint import CheckpointError
from videoiq.train.scoring import evaluate_policy

from wandb_offline import read_runs

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # the session's trained_stages and Ray

ROOT = Path(__file__).resolve().parents[1]
QUIET = lambda *_: None  # noqa: E731


def _rows(out):
    return pq.read_table(sorted(Path(out).glob("part-*.parquet"))).to_pylist()


def test_infer_on_a_split_gives_evals_answers_and_goes_on_where_it_stopped(trained_stages, tiny_videos, tmp_path,
                                                                           ray_local):
    runs, _ = trained_stages
    val = str(tiny_videos / "val.lmdb")
    out = tmp_path / "out"
    summary = infer_collection(str(runs / "policy"), val, str(out), flush_rows=3, printer=QUIET)
    rows = _rows(out)
    split = open_split(val)
    assert sorted(r["key"] for r in rows) == sorted(split.index.keys)  # every video once
    assert len(list(out.glob("part-*.parquet"))) == 3  # parts of 3, 3 and 2 rows
    # the eval stage's pass over the same split: same logits, decisions, top-1, mAP and action shares
    policy = load_policy(str(runs / "policy"))
    ev = evaluate_policy(policy.model, policy.cost, None, eval_loader(VideoClipDataset(split, policy.spec), 4, 0),
                         torch.device("cpu"), split.index.labels, split.num_classes)
    by_key = {r["key"]: r for r in rows}
    for i, logits, decisions in zip(ev.predictions.index, ev.predictions.logits, ev.predictions.extra["decisions"],
                                    strict=True):
        row = by_key[split.index.keys[i]]
        np.testing.assert_allclose(row["logits"], logits, rtol=1e-5, atol=1e-5)
        assert row["actions"] == [policy.model.actions[a] for a in decisions.argmax(axis=-1)]
        assert row["labels"] == [split.classes[c] for c in split.index.labels[i]]
        assert row["top_classes"][0] == split.classes[int(np.argmax(logits))] and row["error"] == ""
    assert summary["top1"] == ev.metrics["val/top1"] and summary["mAP"] == pytest.approx(ev.metrics["val/mAP"])
    for action in policy.model.actions:
        assert summary["actions"][action] == pytest.approx(ev.metrics[f"val/usage/{action}"], abs=1e-4)
    assert summary["gflops_per_video"] == pytest.approx(ev.metrics["val/gflops"], rel=1e-6)
    assert json.loads((out / "summary.json").read_text()) == summary
    # a run stopped before its last part: the same command classifies only what is missing
    sorted(out.glob("part-*.parquet"))[-1].unlink()
    lines = []
    again = infer_collection(str(runs / "policy"), val, str(out), flush_rows=3, printer=lines.append)
    assert "6 already in" in lines[0] and lines[0].endswith("; 2 to classify")
    assert sorted(r["key"] for r in _rows(out)) == sorted(split.index.keys)
    assert again["top1"] == summary["top1"] and again["this_run"]["videos"] == 2
    nothing = infer_collection(str(runs / "policy"), val, str(out), printer=lines.append)
    assert lines[-2].endswith("; 0 to classify") and "this_run" not in nothing


def test_infer_on_video_files_makes_a_row_of_each_one_that_does_not_decode(trained_stages, tiny_videos, tmp_path,
                                                                           ray_local):
    runs, _ = trained_stages
    listing = tmp_path / "videos.txt"  # paths relative to the list, labels as class ids
    lines = (tiny_videos / "val.txt").read_text().splitlines()
    listing.write_text("".join(f"{tiny_videos}/{line}\n" for line in lines) + "broken.mp4 1\n")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "out"
    summary = infer_collection(str(runs / "policy"), str(listing), str(out), printer=QUIET)
    rows = {r["key"]: r for r in _rows(out)}
    assert len(rows) == len(lines) + 1 and summary["videos"] == len(lines) + 1
    assert summary["errors"] == 1 and summary["classified"] == len(lines)
    broken = rows["broken.mp4"]
    assert "broken.mp4" in broken["error"] and broken["top_classes"] is None and broken["labels"] == ["red_magenta"]
    assert summary["error_examples"] == [{"key": "broken.mp4", "error": broken["error"]}]
    assert "top1" in summary and all(len(r["actions"]) == 4 for r in rows.values() if not r["error"])
    # the same videos as predict classifies them (decoded from the files, one process)
    from videoiq.predict import predict_videos

    first = f"{tiny_videos}/{lines[0].split()[0]}"
    expected = predict_videos(str(runs / "policy"), [first], printer=None)[0]
    assert rows[first]["actions"] == expected["actions"]
    assert rows[first]["top_classes"][0] == expected["top"][0]["class"]
    assert rows[first]["gflops"] == pytest.approx(expected["gflops"])
    # a folder of videos: every file under it, keyed by its path there; no labels, so no accuracy
    folder = infer_collection(str(runs / "policy"), str(tiny_videos / "videos" / "val"), str(tmp_path / "f"),
                              engine="int8", printer=QUIET, wandb="offline")
    assert folder["videos"] == len(lines) and folder["errors"] == 0 and "top1" not in folder
    assert {r["engine"] for r in _rows(tmp_path / "f")} == {"int8"}
    # --wandb: the summary, a table of the videos and their decisions picture
    (run,) = read_runs(tmp_path / "f")
    assert run.job_type == "infer" and run.summary["videos"] == len(lines)
    assert run.summary["infer/videos/nrows"] == len(lines) and (tmp_path / "f" / "decisions.png").is_file()


def test_infer_cli_exits_1_when_a_video_failed_and_refuses_bad_inputs_before_any_work(trained_stages, tiny_videos,
                                                                                      tmp_path):
    runs, _ = trained_stages
    policy, val = str(runs / "policy"), str(tiny_videos / "val.lmdb")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine\n")
    (tmp_path / "a.mp4").write_bytes(b"garbage")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "videoiq", "infer", *args], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ""}, timeout=300)

    done = cli(policy, "--input", str(tmp_path / "a.mp4"), "--out", str(tmp_path / "one"))
    assert done.returncode == 1, done.stderr
    assert "1 videos in" in done.stdout and "1 errors" in done.stdout
    bad = {  # each: one `videoiq: error:` line naming what is wrong, exit 2
        "fp checkpoint": ((str(runs / "fp"), "--input", val, "--out", str(tmp_path / "o1")), "'fp'-stage checkpoint"),
        "no input": ((policy, "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")), "does not exist"),
        "foreign out": ((policy, "--input", val, "--out", str(tmp_path / "junk")), "not a videoiq infer folder"),
        "other engine": ((policy, "--input", str(tmp_path / "a.mp4"), "--out", str(tmp_path / "one"), "--engine",
                          "int8"), "engine 'float' (now 'int8')"),
        "batch": ((policy, "--input", val, "--out", str(tmp_path / "o3"), "--batch-size", "0"), "--batch-size"),
    }
    for name, (args, message) in bad.items():
        done = cli(*args)
        errors = [line for line in done.stderr.splitlines() if line.startswith("videoiq: error:")]
        assert done.returncode == 2 and len(errors) == 1 and message in errors[0], (name, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, name
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()  # nothing written for a refused run


def test_infer_refuses_a_busy_folder_other_classes_and_a_bad_list(trained_stages, tiny_videos, tmp_path):
    runs, _ = trained_stages
    classes = load_policy(str(runs / "policy")).classes
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out, LOCK, "videoiq infer", UsageError):  # another infer writing into it
        with pytest.raises(UsageError, match="another `videoiq infer` is writing into it"):
            with ResultsFolder(str(out), {"checkpoint": "x"}):
                pass
    with pytest.raises(DatabaseError, match="other classes"):
        open_collection(str(tiny_videos / "val.lmdb"), classes[:2])
    listing = tmp_path / "list.txt"
    listing.write_text("a.mp4 0\nb.mp4 9\n")
    with pytest.raises(UsageError, match="line 2: class id 9 is outside"):
        open_collection(str(listing), classes)
    listing.write_text("a.mp4\na.mp4\n")
    with pytest.raises(UsageError, match="line 2: a.mp4 is listed twice"):
        open_collection(str(listing), classes)
    with pytest.raises(CheckpointError, match="'ap'-stage checkpoint"):
        infer_collection(str(runs / "ap"), str(listing), str(tmp_path / "o"), printer=QUIET)


def test_infer_on_a_sharded_split_gives_the_single_lmdbs_rows(trained_stages, tiny_videos, tmp_path, ray_local):
    runs, _ = trained_stages
    build = [sys.executable, "-m", "videoiq", "data", "build", "videos", "--root", str(tiny_videos), "--list",
             str(tiny_videos / "val.txt"), "--classes", str(tiny_videos / "classes.txt"), "--short-side", "0"]
    subprocess.run([*build, "--out", str(tmp_path / "one.lmdb")], check=True, capture_output=True)
    subprocess.run([*build, "--out", str(tmp_path / "sharded.lmdb"), "--shards", "3"], check=True, capture_output=True)
    one = infer_collection(str(runs / "policy"), str(tmp_path / "one.lmdb"), str(tmp_path / "a"), printer=QUIET)
    sharded = infer_collection(str(runs / "policy"), str(tmp_path / "sharded.lmdb"), str(tmp_path / "b"),
                               printer=QUIET)
    rows = {r["key"]: r for r in _rows(tmp_path / "a")}
    other = {r["key"]: r for r in _rows(tmp_path / "b")}
    assert rows.keys() == other.keys() and len(rows) == len(open_split(str(tmp_path / "sharded.lmdb")))
    for key, row in rows.items():
        assert other[key]["actions"] == row["actions"]
        np.testing.assert_allclose(other[key]["logits"], row["logits"], rtol=1e-5, atol=1e-5)
    assert sharded["top1"] == one["top1"] and sharded["mAP"] == pytest.approx(one["mAP"])
