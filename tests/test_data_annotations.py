"""``videoiq data build activitynet|kinetics``: the paper's annotation files over real video files, converted
by the one video converter, with the size estimate printed first."""
import json
import os

import numpy as np
import pytest

from videoiq.cli import main
from videoiq.data import annotations, build
from videoiq.data.codec import write_video
from videoiq.data.lists import ListFileError, SourceVideo
from videoiq.data.records import VideoDB

QUIET = open(os.devnull, "w")
FPS = 25


def _video(path, seconds):
    """``seconds`` of a 32-px video at 25 fps, each frame a different shade, written with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = round(seconds * FPS)
    frames = np.zeros((n, 32, 32, 3), np.uint8) + (np.arange(n, dtype=np.uint8) * 3)[:, None, None, None]
    write_video(str(path), frames, FPS)


TAXONOMY = [{"nodeId": 1, "nodeName": "Sports", "parentId": 0, "parentName": "Root"},
            {"nodeId": 2, "nodeName": "Household", "parentId": 0, "parentName": "Root"},
            {"nodeId": 3, "nodeName": "Bowling", "parentId": 1, "parentName": "Sports"},
            {"nodeId": 4, "nodeName": "Archery", "parentId": 1, "parentName": "Sports"},
            {"nodeId": 5, "nodeName": "Cooking", "parentId": 2, "parentName": "Household"}]


def _activitynet(root):
    """A v1.3-style JSON over ``v_aaa.mp4``, ``sub/bbb.mkv`` and ``ddd.mp4``; ``ccc`` has no file."""
    _video(root / "videos" / "v_aaa.mp4", 2.0)
    _video(root / "videos" / "sub" / "bbb.mkv", 1.2)
    _video(root / "videos" / "ddd.mp4", 1.0)
    database = {
        "aaa": {"subset": "training", "duration": 2.0, "url": "https://www.youtube.com/watch?v=aaa",
                "annotations": [{"segment": [0.2, 1.0], "label": "Bowling"},
                                {"segment": [1.2, 1.8], "label": "Archery"}]},
        "bbb": {"subset": "training", "duration": 1.2, "annotations": [{"segment": [0.0, 1.2], "label": "Cooking"}]},
        "ccc": {"subset": "training", "duration": 9.0, "annotations": [{"segment": [1, 2], "label": "Cooking"}]},
        "ddd": {"subset": "validation", "duration": 1.0, "annotations": [{"segment": [0, 1], "label": "Archery"}]},
    }
    path = root / "activity_net.v1-3.min.json"
    path.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": TAXONOMY, "database": database}))
    return path


def test_activitynet_whole_videos_multilabel_with_missing_files_skipped(tmp_path, capsys):
    path = _activitynet(tmp_path)
    args = ["data", "build", "activitynet", "--json", str(path), "--root", str(tmp_path / "videos"),
            "--short-side", "32", "--workers", "1"]
    assert main(args + ["--subset", "training", "--out", str(tmp_path / "t.lmdb")]) == 0
    out = capsys.readouterr().out
    # the estimate comes first: 2 + 1.2 declared seconds at the files' 25 fps = 80 frames
    assert out.index("size estimate: 2 videos, 3 s declared, at 25 fps ~80 frames x ~") < out.index("t.lmdb: 2 videos")
    assert "1 skipped, 0 decoded short" in out and "skipped ccc: no video file v_ccc.* or ccc.*" in out
    db = VideoDB(tmp_path / "t.lmdb")
    assert db.classes == ["Archery", "Bowling", "Cooking"]  # the taxonomy's leaves, not its parents
    assert db.index.keys == ("aaa", "bbb") and db.index.labels == ((0, 1), (2,)) and db.meta["multilabel"]
    assert db.index.num_frames == (50, 30) and db.meta["split"] == "training"
    # the validation database gets the same class ids, whatever labels its own videos show
    assert main(args + ["--subset", "validation", "--out", str(tmp_path / "v.lmdb")]) == 0
    val = VideoDB(tmp_path / "v.lmdb")
    assert val.classes == db.classes and val.index.labels == ((0,),)


def test_activitynet_trim_decodes_each_labelled_segment_only(tmp_path):
    path = _activitynet(tmp_path)
    found = annotations.parse_activitynet(str(path), str(tmp_path / "videos"), "training", trim=True)
    assert [(it.key, it.labels, it.span) for it in found.items] == [
        ("aaa/000", (1,), (0.2, 1.0)), ("aaa/001", (0,), (1.2, 1.8)), ("bbb/000", (2,), (0.0, 1.2))]
    assert found.seconds == pytest.approx([0.8, 0.6, 1.2]) and [k for k, _ in found.missing] == ["ccc/000"]
    report = build.build_videos(str(tmp_path / "s.lmdb"), found.items, found.classes, short_side=32,
                                missing=found.missing, stream=QUIET)
    assert report.short == [] and [k for k, _ in report.skipped] == ["ccc/000"]
    assert VideoDB(tmp_path / "s.lmdb").index.num_frames == (20, 15, 30)  # the segments' seconds x 25 fps


def test_activitynet_bad_entries_are_all_named(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"taxonomy": TAXONOMY, "database": {
        "ok": {"subset": "training", "annotations": [{"segment": [0, 1], "label": "Bowling"}]},
        "back": {"subset": "training", "annotations": [{"segment": [3, 1], "label": "Bowling"}]},
        "what": {"subset": "training", "annotations": [{"segment": [0, 1], "label": "Juggling"}]},
        "none": {"subset": "training", "annotations": []}}}))
    with pytest.raises(ListFileError) as info:
        annotations.parse_activitynet(str(path), str(tmp_path), "training")
    text = str(info.value)
    assert "3 bad entry(s)" in text and "entry 2: video 'back': annotation 0: segment [3, 1] does not run" in text
    assert "entry 3: video 'what': annotation 0: label 'Juggling' is not one of the 3 classes" in text
    assert "entry 4: video 'none': no 'annotations'" in text
    path.write_text("{not json")
    with pytest.raises(ListFileError, match="a.json: not JSON"):
        annotations.parse_activitynet(str(path), str(tmp_path), "training")
    with pytest.raises(ListFileError, match="subset 'testing': expected one of training, validation"):
        annotations.parse_activitynet(str(path), str(tmp_path), "testing")


def test_kinetics_csv_clips_whole_videos_and_missing_files(tmp_path, capsys):
    root = tmp_path / "k"
    _video(root / "train" / "abseiling" / "aaaaaaaaaaa_000004_000005.mp4", 1.0)  # a downloaded clip, per label
    _video(root / "train" / "bbbbbbbbbbb.mkv", 3.0)  # a whole video: only its seconds 1..2 are the clip
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                        "abseiling,aaaaaaaaaaa,4,5,train\n"
                                        "air drumming,bbbbbbbbbbb,1,2,train\n"
                                        "abseiling,ccccccccccc,0,10,train\n"
                                        "air drumming,ddddddddddd,0,10,val\n")
    assert main(["data", "build", "kinetics", "--csv", str(tmp_path / "train.csv"), "--root", str(root),
                 "--subset", "train", "--short-side", "32", "--workers", "1", "--out", str(tmp_path / "k.lmdb")]) == 0
    out = capsys.readouterr().out
    assert "size estimate: 2 videos, 2 s declared, at 25 fps ~50 frames" in out
    assert "1 skipped" in out and "skipped ccccccccccc_000000_000010: no video file" in out
    db = VideoDB(tmp_path / "k.lmdb")
    assert db.classes == ["abseiling", "air drumming"] and db.meta["split"] == "train"
    assert db.index.keys == ("aaaaaaaaaaa_000004_000005", "bbbbbbbbbbb_000001_000002")
    assert db.index.labels == ((0,), (1,)) and db.index.num_frames == (25, 25)


def test_kinetics_bad_rows_are_all_named_with_their_lines(tmp_path):
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end\na,x1,0,10\na,x2,ten,20\nb,x3,5,5\nb,,0,1\n")
    with pytest.raises(ListFileError) as info:
        annotations.parse_kinetics_csv(str(tmp_path / "k.csv"), str(tmp_path))
    text = str(info.value)
    assert "3 bad line(s)" in text and "line 3: time_start and time_end must be seconds, got 'ten'" in text
    assert "line 4: time_end 5 is not after time_start 5" in text and "line 5: no youtube_id" in text
    (tmp_path / "h.csv").write_text("youtube_id,time_start,time_end\nx1,0,10\n")
    with pytest.raises(ListFileError, match="the header row lacks label"):
        annotations.parse_kinetics_csv(str(tmp_path / "h.csv"), str(tmp_path))


def test_size_estimate_from_headers_and_measured_frames(tmp_path):
    for name, seconds in (("a", 1.0), ("b", 1.0), ("c", 4.0)):
        _video(tmp_path / f"{name}.mp4", seconds)
    items = [SourceVideo(name, str(tmp_path / f"{name}.mp4"), (0,)) for name in "abc"]
    every = build.estimate_size(items, None, None, 32, 90)
    assert (every.seconds, every.frames_per_second, every.frames, every.measured_videos) == (6.0, 25.0, 150.0, 3)
    assert every.measured_frames == 1 + 1 + 4 and every.bytes_per_frame > 100  # one frame a second of each
    ends = build.estimate_size(items, None, 5.0, 32, 90, sample=2)  # a and c sampled, b given their mean
    assert (ends.seconds, ends.frames) == (7.5, 37.5)
    given = build.estimate_size(items, [10.0, None, 20.0], 5.0, 32, 90)
    assert given.seconds == 10.0 + 1.0 + 20.0 and "size estimate: 3 videos, 31 s declared, at 5 fps" in given.describe(
        32, 90)
