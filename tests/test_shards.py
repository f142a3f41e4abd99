"""Sharded splits: built in shards (processes, Ray tasks), read like one LMDB, resumed and extended, and every
damaged or foreign piece refused with a message naming it. The two-node builds and reads are in test_two_nodes."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from videoiq.atomic import FolderLock
from videoiq.data import build
from videoiq.data.clips import ClipSpec, VideoClipDataset
from videoiq.data.lists import parse_video_list, read_class_names
from videoiq.data.records import DatabaseError, VideoDB
from videoiq.data.shard_build import LOCK_FILE, BuildError, build_sharded, local_runner
from videoiq.data.shards import MANIFEST, ShardedSplit, open_split

QUIET = open(os.devnull, "w")
CONVERSION = build.videos_conversion(short_side=0)


def _inputs(root):
    return parse_video_list(str(root / "train.txt"), str(root)), read_class_names(str(root / "classes.txt"))


def _sharded(root, out, shards=3, workers=1, items=None, conversion=CONVERSION, **kw):
    found, classes = _inputs(root)
    return build_sharded(str(out), items if items is not None else found, classes, conversion, shards,
                         local_runner(workers), stream=QUIET, **kw)


def _records(db):
    return {db.index.keys[i]: db.read(i) for i in range(len(db))}


@pytest.fixture(scope="module")
def single(tiny_videos, tmp_path_factory):
    """The training videos as one LMDB, built in one process."""
    items, classes = _inputs(tiny_videos)
    out = tmp_path_factory.mktemp("single") / "train.lmdb"
    build.write_database(str(out), items, classes, CONVERSION, workers=1, stream=QUIET)
    return VideoDB(str(out))


@pytest.fixture
def split(tiny_videos, tmp_path):
    _sharded(tiny_videos, tmp_path / "train.lmdb")
    return tmp_path / "train.lmdb"


def test_shard_build_reads_as_the_single_lmdb(tiny_videos, single, tmp_path):
    report = _sharded(tiny_videos, tmp_path / "a.lmdb", shards=3, workers=2)
    assert report.converted == 16 and report.meta["shards"] == 3 and "in 3 shards" in report.summary()
    sharded = open_split(tmp_path / "a.lmdb")
    assert isinstance(sharded, ShardedSplit)
    assert sharded.index == single.index and sharded.classes == single.classes
    assert _records(sharded) == _records(single)  # header and every frame's bytes, video for video
    assert [s.videos for s in sharded.shards] == [6, 6, 4]
    # the same clips from either, through the PyTorch dataset
    spec = ClipSpec(train=True, segments=4, size=32)
    a, b = VideoClipDataset(sharded, spec, seed=3), VideoClipDataset(single, spec, seed=3)
    assert all(np.array_equal(a[i]["video"], b[i]["video"]) for i in range(len(a)))
    # how the shards were run does not change what they hold
    _sharded(tiny_videos, tmp_path / "b.lmdb", shards=3, workers=1)
    assert open_split(tmp_path / "b.lmdb").fingerprint == sharded.fingerprint != single.fingerprint


def test_shard_rerun_keeps_finished_shards_and_redoes_a_killed_one(tiny_videos, split):
    first = split / "shard-00000.lmdb" / "data.mdb"
    stamp = os.stat(first).st_mtime_ns
    fingerprint = open_split(split).fingerprint
    # a job killed mid-shard: its temporary folder is left, its shard never renamed into place
    shutil.rmtree(split / "shard-00001.lmdb")
    (split / ".shard-00001.lmdb.partial-dead").mkdir()
    (split / ".shard-00001.lmdb.partial-dead" / "data.mdb").write_bytes(b"half")
    report = _sharded(tiny_videos, split)
    assert report.converted == 6 and report.already_present == 10
    assert not any(".partial-" in n for n in os.listdir(split))
    assert os.stat(first).st_mtime_ns == stamp  # untouched
    assert open_split(split).fingerprint == fingerprint


def test_shard_added_videos_go_into_new_shards(tiny_videos, tmp_path):
    items, _ = _inputs(tiny_videos)
    out = tmp_path / "train.lmdb"
    _sharded(tiny_videos, out, shards=2, items=items[:12])
    before = {s.name: s.fingerprint for s in open_split(out).shards}
    report = _sharded(tiny_videos, out, shards=2)
    after = open_split(out)
    assert report.converted == 4 and len(after) == 16
    assert {s.name: s.fingerprint for s in after.shards[:2]} == before and len(after.shards) == 3
    assert after.index.keys == tuple(it.key for it in items)


def test_shard_missing_is_named_before_reading(split):
    shutil.rmtree(split / "shard-00002.lmdb")
    with pytest.raises(DatabaseError, match=r"1 of 3 shards are missing here: shard-00002\.lmdb"):
        VideoClipDataset(str(split), ClipSpec(train=True, segments=4, size=32))


def test_shard_truncated_is_named(split):
    data = split / "shard-00001.lmdb" / "data.mdb"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(DatabaseError, match=r"shard-00001\.lmdb/data\.mdb: truncated"):
        open_split(split).read(7)
    with pytest.raises(DatabaseError, match=r"shard-00001\.lmdb/data\.mdb: truncated"):  # before any read
        VideoClipDataset(str(split), ClipSpec(train=True, segments=4, size=32))


def test_shard_of_another_build_is_refused(tiny_videos, split, tmp_path):
    _sharded(tiny_videos, tmp_path / "other.lmdb", conversion=build.videos_conversion(short_side=0, quality=50))
    shutil.rmtree(split / "shard-00001.lmdb")
    shutil.copytree(tmp_path / "other.lmdb" / "shard-00001.lmdb", split / "shard-00001.lmdb")
    with pytest.raises(DatabaseError, match=r"shard shard-00001\.lmdb of another build"):
        open_split(split).read(6)


def test_shard_manifest_edited_by_hand_is_refused(split):
    manifest = json.loads((split / MANIFEST).read_text())
    manifest["shards"] = manifest["shards"][:2]  # "drop a shard": a smaller dataset, silently
    (split / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DatabaseError, match="edited after the build"):
        open_split(split)


def test_shard_index_from_elsewhere_is_refused(tiny_videos, split, tmp_path):
    items, _ = _inputs(tiny_videos)
    _sharded(tiny_videos, tmp_path / "fewer.lmdb", items=items[:8])
    shutil.copy(tmp_path / "fewer.lmdb" / "index.msgpack", split / "index.msgpack")
    with pytest.raises(DatabaseError, match="not the index manifest.json was written with"):
        open_split(split)


def test_shard_build_refuses_other_settings_a_shorter_list_and_a_second_build(tiny_videos, split):
    items, _ = _inputs(tiny_videos)
    with pytest.raises(BuildError, match=r"different settings \(quality\)"):
        _sharded(tiny_videos, split, conversion=build.videos_conversion(short_side=0, quality=50))
    with pytest.raises(BuildError, match="videos that are not in this list"):
        _sharded(tiny_videos, split, items=items[:10])
    with FolderLock(str(split), LOCK_FILE, "videoiq data build", BuildError):
        with pytest.raises(BuildError, match="another `videoiq data build` is writing into it"):
            _sharded(tiny_videos, split)
    assert _sharded(tiny_videos, split).already_present == 16  # and the folder is as it was


def test_shard_build_unfinished_is_named(tiny_videos, split):
    (split / MANIFEST).unlink()  # killed between the last shard and the manifest
    with pytest.raises(DatabaseError, match="sharded build not finished"):
        open_split(split)
    _sharded(tiny_videos, split)
    assert len(open_split(split)) == 16


@pytest.mark.slow
def test_shard_cli_build_inspect_and_error_line(tiny_videos, tmp_path):
    out = tmp_path / "train.lmdb"
    cmd = [sys.executable, "-m", "videoiq", "data", "build", "videos", "--root", str(tiny_videos), "--list",
           str(tiny_videos / "train.txt"), "--classes", str(tiny_videos / "classes.txt"), "--out", str(out),
           "--shards", "2", "--short-side", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0 and "16 videos, " in done.stdout and "in 2 shards" in done.stdout, done.stderr
    shown = subprocess.run([sys.executable, "-m", "videoiq", "data", "inspect", str(out)], capture_output=True,
                           text=True)
    assert "shards       2," in shown.stdout and "all here and whole" in shown.stdout
    assert "shard-00001.lmdb        8 videos" in shown.stdout, shown.stdout
    shutil.rmtree(out / "shard-00001.lmdb")
    shown = subprocess.run([sys.executable, "-m", "videoiq", "data", "inspect", str(out)], capture_output=True,
                           text=True)
    assert "1 missing or bad here" in shown.stdout and "shard-00001.lmdb" in shown.stdout
    ray_without_shards = subprocess.run(cmd[:-4] + ["--ray"], capture_output=True, text=True)
    assert ray_without_shards.returncode == 2
    assert ray_without_shards.stderr.strip() == "videoiq: error: --ray builds shards: give --shards N too"


@pytest.mark.slow
def test_shard_split_trains_a_stage_in_process(tiny_videos, tmp_path):
    from videoiq.dispatch import run_config

    from helpers import QUIET as SAY, stage_config

    root = tmp_path / "data"
    root.mkdir()
    _sharded(tiny_videos, root / "train.lmdb", shards=2)
    shutil.copytree(tiny_videos / "val.lmdb", root / "val.lmdb")
    cfg = stage_config("fp", root, model={"name": "resnet_tiny"}, logging={"wandb": "disabled"},
                       run={"storage_path": str(tmp_path / "runs"), "name": "fp"})
    from videoiq.train.checkpoint import load_checkpoint

    run_config(cfg, printer=SAY)
    lineage = load_checkpoint(tmp_path / "runs" / "fp")["lineage"]
    assert lineage["data"]["train"]["fingerprint"] == open_split(root / "train.lmdb").fingerprint
    assert lineage["data"]["train"]["videos"] == 16


@pytest.mark.ray
def test_shard_ray_build_and_read_every_video_once(ray_local, tiny_videos, split, tmp_path):
    from videoiq.ray.build import ray_runner
    from videoiq.ray.data import clip_dataset, read_shards

    items, classes = _inputs(tiny_videos)
    report = build_sharded(str(tmp_path / "ray.lmdb"), items, classes, CONVERSION, 3, ray_runner(), stream=QUIET)
    assert report.converted == 16
    assert open_split(tmp_path / "ray.lmdb").fingerprint == open_split(split).fingerprint
    spec = ClipSpec(train=True, segments=4, size=32)
    ds = clip_dataset(str(split), spec, seed=0, read_log=str(tmp_path / "reads"))
    for _ in range(2):
        assert sorted(int(i) for b in ds.iter_batches(batch_size=4) for i in b["index"]) == list(range(16))
    epochs = read_shards(tmp_path / "reads")
    assert len(epochs) == 2
    for nodes in epochs.values():
        (counts,) = nodes.values()  # one node here
        assert counts == {"shard-00000.lmdb": 6, "shard-00001.lmdb": 6, "shard-00002.lmdb": 4}
    # a damaged shard, found by the node that holds it: named before anything reads
    damaged = tmp_path / "damaged.lmdb"
    shutil.copytree(split, damaged)
    data = damaged / "shard-00002.lmdb" / "data.mdb"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(DatabaseError, match=r"Ray node \w+ \(.*\): .*shard-00002\.lmdb/data\.mdb: truncated"):
        clip_dataset(str(damaged), spec, seed=0)
    # a shard no node holds: named before anything reads
    shutil.rmtree(split / "shard-00001.lmdb")
    with pytest.raises(DatabaseError, match=r"1 shards are on no node of the Ray cluster: shard-00001\.lmdb"):
        clip_dataset(str(split), spec, seed=0)
