"""The LMDB record format, the database reader, and the converters from frame folders and video files."""
import io
import os
import pickle
import signal
import subprocess
import sys
import time

import lmdb
import msgpack
import numpy as np
import pytest
import torch
from PIL import Image

from videoiq.data import build, lists
from videoiq.data.clips import ClipSpec, VideoClipDataset
from videoiq.data.codec import encode_jpeg, read_video, write_video
from videoiq.data.records import DatabaseError, RecordError, VideoDB, decode_header, encode_record, forget, split_frames

QUIET = open(os.devnull, "w")


def _jpeg(seed, h=24, w=32):
    return encode_jpeg(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _frame_folders(root, n_videos=4, frames=6, template="image_{:05d}.jpg", start=1):
    """Folders of JPEG frames and a start_end list file, labels 0..n_videos-1 modulo 3."""
    lines = []
    for v in range(n_videos):
        folder = root / "frames" / f"vid{v}"
        folder.mkdir(parents=True)
        for k in range(start, start + frames):
            (folder / template.format(k)).write_bytes(_jpeg(100 * v + k))
        lines.append(f"frames/vid{v} {start} {start + frames - 1} {v % 3}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "list.txt"


# --- records -----------------------------------------------------------------------------------------


def test_record_round_trip_and_frame_slicing():
    frames = [_jpeg(i) for i in range(5)]
    value = encode_record(frames, [3, 7], 24, 32, "a/b")
    header, start = decode_header(value, "db", "a/b")
    assert header.labels == (3, 7) and header.num_frames == 5 and (header.height, header.width) == (24, 32)
    assert header.source == "a/b"
    assert split_frames(value, header, start, [4, 0, 4]) == [frames[4], frames[0], frames[4]]


@pytest.mark.parametrize("damage, message", [
    (lambda v: v[:-10], "truncated or padded"),
    (lambda v: v + b"xx", "truncated or padded"),
    (lambda v: v[:9], "truncated"),
    (lambda v: b"NOPE" + v[4:], "not a videoiq record"),
    (lambda v: v[:4] + (2).to_bytes(4, "little") + v[8:], "format version 2"),
    (lambda v: pickle.dumps((3, b"jpeg", 1)), "not a videoiq record"),  # the original's kind of value
])
def test_damaged_records_name_the_key(damage, message):
    value = encode_record([_jpeg(0), _jpeg(1)], [1], 24, 32, "v")
    with pytest.raises(RecordError, match=message) as info:
        decode_header(damage(value), "some.lmdb", "vid7")
    assert "some.lmdb: record 'vid7'" in str(info.value)


# --- frame folders -----------------------------------------------------------------------------------


def test_frame_folders_convert_with_a_configurable_template(tmp_path):
    list_file = _frame_folders(tmp_path, template="image_{:05d}.jpg", start=3)
    items = lists.parse_frame_list(str(list_file), str(tmp_path))
    report = build.build_frames(str(tmp_path / "out.lmdb"), items, ["a", "b", "c"], "image_{:05d}.jpg",
                                dataset="custom", split="train", stream=QUIET)
    assert report.converted == 4 and not report.skipped
    db = VideoDB(tmp_path / "out.lmdb")
    assert db.index.keys == ("frames/vid0", "frames/vid1", "frames/vid2", "frames/vid3")
    assert db.index.num_frames == (6,) * 4 and db.index.labels == ((0,), (1,), (2,), (0,))
    assert db.meta["classes"] == ["a", "b", "c"] and db.meta["frame_size"] == [24, 32]
    assert db.meta["format"] == "videoiq-lmdb" and db.meta["version"] == 1 and db.meta["split"] == "train"
    header, jpegs = db.read(2, [0, 5])
    assert jpegs == [(tmp_path / "frames/vid2/image_00003.jpg").read_bytes(),
                     (tmp_path / "frames/vid2/image_00008.jpg").read_bytes()]  # stored byte for byte


def test_count_layout_and_multilabel_lines(tmp_path):
    _frame_folders(tmp_path, n_videos=2, template="{:05d}.jpg")
    (tmp_path / "count.txt").write_text("frames/vid0;6;1;2\nframes/vid1;4;0\n")
    items = lists.parse_frame_list(str(tmp_path / "count.txt"), str(tmp_path), ";", "count")
    build.build_frames(str(tmp_path / "c.lmdb"), items, ["x", "y", "z"], stream=QUIET)
    db = VideoDB(tmp_path / "c.lmdb")
    assert db.index.num_frames == (6, 4) and db.index.labels == ((1, 2), (0,)) and db.meta["multilabel"]


def test_bad_inputs_are_skipped_and_reported(tmp_path):
    _frame_folders(tmp_path, n_videos=5, template="{:05d}.jpg")
    os.remove(tmp_path / "frames/vid1/00003.jpg")
    (tmp_path / "frames/vid2/00002.jpg").write_bytes(b"\xff\xd8\xff garbage, not a jpeg")
    png = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 20, 30)).save(png, "PNG")
    (tmp_path / "frames/vid3/00001.jpg").write_bytes(png.getvalue())  # a PNG behind a .jpg name
    items = lists.parse_frame_list(str(tmp_path / "list.txt"), str(tmp_path))
    report = build.build_frames(str(tmp_path / "o.lmdb"), items, ["a", "b", "c"], stream=QUIET)
    assert report.converted == 3 and report.reencoded_frames == 1
    reasons = dict(report.skipped)
    assert "missing frame" in reasons["frames/vid1"] and "00003.jpg" in reasons["frames/vid1"]
    assert "undecodable" in reasons["frames/vid2"]
    db = VideoDB(tmp_path / "o.lmdb")
    assert db.meta["skipped"] == 2 and db.index.keys == ("frames/vid0", "frames/vid3", "frames/vid4")
    assert "skipped frames/vid1: missing frame" in report.summary()
    with pytest.raises(build.BuildError, match="strict mode"):
        build.build_frames(str(tmp_path / "s.lmdb"), items, ["a", "b", "c"], strict=True, stream=QUIET)


def test_bad_list_lines_are_all_named(tmp_path):
    (tmp_path / "l.txt").write_text("a 1 5 0\nb 1 x 0\nc 1\n__meta__ 1 4 0\na 1 5 1\nd 1 3 9\ne 1 3 x\nf 1 3 -1\n")
    with pytest.raises(lists.ListFileError) as info:
        lists.parse_frame_list(str(tmp_path / "l.txt"), str(tmp_path), num_classes=3)
    text = str(info.value)
    for expected in ("7 bad line(s)", "line 2: frame numbers", "line 3: expected 4+ fields",
                     "line 4: video id '__meta__'",
                     "line 5: video id 'a' appears twice (first on line 1)", "line 6: label(s) [9] outside 0..2",
                     "line 7: labels must be integers", "line 8: label(s) [-1] outside 0..2"):
        assert expected in text
    with pytest.raises(lists.ListFileError, match="cannot read"):
        lists.parse_frame_list(str(tmp_path / "missing.txt"), str(tmp_path))


def test_video_list_names_non_integer_and_out_of_range_labels_in_one_error(tmp_path):
    (tmp_path / "v.txt").write_text("a.mp4 0\nb.mp4 two\nc.mp4 5\nd.mp4 1 7\n")
    with pytest.raises(lists.ListFileError) as info:
        lists.parse_video_list(str(tmp_path / "v.txt"), str(tmp_path), num_classes=3)
    text = str(info.value)
    assert "3 bad line(s)" in text and "line 2: labels must be integers, got 'two'" in text
    assert "line 3: label(s) [5] outside 0..2" in text and "line 4: label(s) [7] outside 0..2" in text


def test_a_different_build_on_the_same_path_is_refused(tmp_path):
    _frame_folders(tmp_path, n_videos=2)
    items = lists.parse_frame_list(str(tmp_path / "list.txt"), str(tmp_path))
    out = str(tmp_path / "o.lmdb")
    build.build_frames(out, items, ["a", "b", "c"], "image_{:05d}.jpg", stream=QUIET)
    again = build.build_frames(out, items, ["a", "b", "c"], "image_{:05d}.jpg", stream=QUIET)
    assert again.already_present == 2 and again.converted == 0
    with pytest.raises(build.BuildError, match="different settings \\(template\\)"):
        build.build_frames(out, items, ["a", "b", "c"], "{:05d}.jpg", stream=QUIET)
    with pytest.raises(build.BuildError, match="not in this list"):
        build.build_frames(out, items[:1], ["a", "b", "c"], "image_{:05d}.jpg", stream=QUIET)
    assert len(VideoDB(out)) == 2  # the refused builds left the database as it was
    forget(out)
    build.build_frames(out, items[:1], ["a", "b", "c"], "image_{:05d}.jpg", overwrite=True, stream=QUIET)
    assert len(VideoDB(out)) == 1


# --- databases that must be refused -------------------------------------------------------------------


def _raw_put(path, key, value):
    forget(path)
    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()


def test_foreign_unfinished_and_other_version_databases_are_refused(tmp_path, tiny_videos):
    with pytest.raises(DatabaseError, match="no such database"):
        VideoDB(tmp_path / "nope.lmdb")
    _raw_put(tmp_path / "orig.lmdb", b"__keys__", b"pyarrow bytes")
    with pytest.raises(DatabaseError, match="original VideoIQ create_lmdb.py"):
        VideoDB(tmp_path / "orig.lmdb")
    _raw_put(tmp_path / "half.lmdb", b"__build__", msgpack.packb({"settings": {}, "keys": []}))
    with pytest.raises(DatabaseError, match="conversion not finished"):
        VideoDB(tmp_path / "half.lmdb")
    import shutil
    shutil.copytree(tiny_videos / "val.lmdb", tmp_path / "v2.lmdb")
    env = lmdb.open(str(tmp_path / "v2.lmdb"))
    with env.begin(write=True) as txn:
        meta = msgpack.unpackb(txn.get(b"__meta__"))
        txn.put(b"__meta__", msgpack.packb({**meta, "version": 2}))
    env.close()
    with pytest.raises(DatabaseError, match="format version 2; this videoiq reads version 1"):
        VideoDB(tmp_path / "v2.lmdb")


# --- video files -------------------------------------------------------------------------------------


def test_generated_videos_convert_through_pyav(tiny_videos):
    db = VideoDB(tiny_videos / "train.lmdb")
    assert len(db) == 16 and db.num_classes == 4 and db.meta["build"]["kind"] == "videos"
    assert db.classes == ["red_cyan", "red_magenta", "blue_cyan", "blue_magenta"]
    assert db.meta["frame_size"] == [32, 32] and 8 <= db.meta["frames_per_video"]["min"]
    assert sorted(x for ls in db.index.labels for x in ls) == sorted(list(range(4)) * 4)
    assert db.index.keys[0] == "videos/train/red_cyan/red_cyan_0000"


def test_generated_set_records_each_frames_kind(tiny_videos):
    from videoiq.data.frame_kinds import find_frame_kinds
    from videoiq.data.synthetic import KINDS

    db = VideoDB(tiny_videos / "train.lmdb")
    kinds = find_frame_kinds(str(tiny_videos), "train", db)
    assert kinds.names == KINDS and kinds.groups[0] is None  # blank frames show nothing
    assert kinds.groups[1] == (0, 0, 1, 1) and kinds.groups[2] == kinds.groups[3] == (0, 1, 0, 1)  # colour, mark
    for key, n in zip(db.index.keys, db.index.num_frames, strict=True):
        digits = kinds.videos[key]
        assert len(digits) == n  # one kind per decoded frame
        assert "1" in digits and ("2" in digits) != ("3" in digits)  # a colour shot, and clear or faint close-ups
    sampled = kinds.sampled(db, segments=8)
    assert sampled.shape == (len(db), 8)


def test_fps_and_short_side(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (24, 48, 64, 3), dtype=np.uint8)
    write_video(str(tmp_path / "v.mp4"), frames, fps=8)
    assert len(list(read_video(str(tmp_path / "v.mp4")))) == 24
    half = list(read_video(str(tmp_path / "v.mp4"), fps=4, short_side=32))
    assert len(half) == 12 and half[0].shape == (32, 42, 3)
    assert len(list(read_video(str(tmp_path / "v.mp4"), fps=16))) == 24  # never repeats frames


def test_undecodable_videos_are_skipped(tmp_path):
    (tmp_path / "a").mkdir()
    write_video(str(tmp_path / "a/good.mp4"), np.zeros((4, 16, 16, 3), np.uint8), fps=4)
    (tmp_path / "a/broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    items, classes = lists.scan_video_folders(str(tmp_path))
    report = build.build_videos(str(tmp_path / "o.lmdb"), items, classes, short_side=0, stream=QUIET)
    assert report.converted == 1 and report.skipped[0][0] == "a/broken" and "cannot open" in report.skipped[0][1]
    with pytest.raises(build.BuildError, match="no video could be converted"):
        build.build_videos(str(tmp_path / "p.lmdb"), [items[0]], classes, short_side=0, stream=QUIET)


def _committed_videos(path):
    if not (path / "data.mdb").exists():
        return 0
    env = lmdb.open(str(path), readonly=True)  # a locked reader: a consistent snapshot beside the writer
    with env.begin() as txn:
        n = sum(1 for k in txn.cursor().iternext(values=False) if not k.startswith(b"__"))
    env.close()
    return n


@pytest.mark.slow
def test_killed_conversion_resumes_without_duplicates(tmp_path):
    src = tmp_path / "src"
    for c in range(2):
        (src / f"class{c}").mkdir(parents=True)
        for k in range(15):
            write_video(str(src / f"class{c}/v{k:02d}.mp4"), np.full((4, 16, 16, 3), 8 * k, np.uint8), fps=4)
    out = tmp_path / "o.lmdb"
    # The real converter in a real process, slowed to 0.1 s a video so that the kill lands mid-way.
    script = (
        "import sys, time; import videoiq.data.build as b; from videoiq.data.lists import scan_video_folders\n"
        "real = b.convert_video_file\n"
        "b.convert_video_file = lambda *a: (time.sleep(0.1), real(*a))[1]\n"
        "items, classes = scan_video_folders(sys.argv[1])\n"
        "b.build_videos(sys.argv[2], items, classes, short_side=0, commit_every=3)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(src), str(out)], stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and _committed_videos(out) < 9:
        time.sleep(0.05)
    assert proc.poll() is None, "the conversion finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = _committed_videos(out)
    assert 9 <= written < 30
    with pytest.raises(DatabaseError, match="conversion not finished"):
        VideoDB(out)
    items, classes = lists.scan_video_folders(str(src))
    report = build.build_videos(str(out), items, classes, short_side=0, stream=QUIET)
    assert report.already_present == written and report.converted == 30 - written
    db = VideoDB(out)
    assert list(db.index.keys) == [it.key for it in items]
    forget(str(out))
    env = lmdb.open(str(out), readonly=True, lock=False)
    with env.begin() as txn:
        assert sum(1 for _ in txn.cursor()) == 30 + 2  # the videos, __meta__ and __index__; nothing else
    env.close()


# --- samples -------------------------------------------------------------------------------------------


def test_dataset_samples(tiny_videos):
    train = VideoClipDataset(str(tiny_videos / "train.lmdb"), ClipSpec(train=True, segments=4, size=24))
    s = train[3]
    assert s["video"].shape == (4, 3, 24, 24) and s["video"].dtype == torch.uint8
    assert s["label"].item() == train.db.index.labels[3][0] and s["index"].item() == 3 and s["valid"].item()
    assert torch.equal(train[3]["video"], s["video"])  # reproducible within an epoch
    clips = []
    for epoch in range(1, 4):
        train.set_epoch(epoch)
        clips.append(train[3]["video"])
    assert any(not torch.equal(c, s["video"]) for c in clips)  # new epochs draw new clips
    val = VideoClipDataset(str(tiny_videos / "val.lmdb"),
                           ClipSpec(train=False, segments=4, size=24, scale_size=28, num_clips=2, num_crops=3))
    v = val[0]
    assert v["video"].shape == (6, 4, 3, 24, 24)
    assert torch.equal(v["video"], val[0]["video"])


@pytest.mark.parametrize("decoder", ["simplejpeg", "pil"])
def test_frames_decode_into_one_array_as_they_would_one_by_one(decoder):
    from videoiq.data.codec import FrameError, decode_jpeg

    jpeg = _jpeg(1)
    out = np.zeros((24, 32, 3), np.uint8)
    assert decode_jpeg(jpeg, decoder, out=out) is out and np.array_equal(out, decode_jpeg(jpeg, decoder))
    with pytest.raises(FrameError, match="24x32 pixels where 32x32 were expected"):
        decode_jpeg(jpeg, decoder, out=np.zeros((32, 32, 3), np.uint8))


def test_clips_from_one_reused_buffer_equal_per_frame_decoding():
    from videoiq.data.clips import decode_clip
    from videoiq.data.codec import decode_jpeg
    from videoiq.data.transforms import EvalTransform, TrainTransform

    train, evaluation = ClipSpec(train=True, segments=4, size=16), ClipSpec(train=False, segments=2, size=16,
                                                                               scale_size=20, num_clips=2, num_crops=3)
    clips = [[_jpeg(10 * c + k) for k in range(4)] for c in range(3)]

    def one_by_one(jpegs):  # the frames as separate arrays, stacked
        return torch.from_numpy(np.stack([decode_jpeg(j) for j in jpegs])).permute(0, 3, 1, 2)

    first = decode_clip(train, clips[0], np.random.default_rng(0))
    for c, jpegs in enumerate(clips):
        video = decode_clip(train, jpegs, np.random.default_rng(c))
        assert video.is_contiguous()
        assert torch.equal(video, TrainTransform(16)(one_by_one(jpegs), np.random.default_rng(c)))
        views = decode_clip(evaluation, jpegs, None)
        expected = torch.cat([EvalTransform(16, 20, 3)(part) for part in one_by_one(jpegs).split(2)])
        assert views.shape == (6, 2, 3, 16, 16) and torch.equal(views, expected)
        slot = torch.zeros(6, 2, 3, 16, 16, dtype=torch.uint8)
        assert decode_clip(evaluation, jpegs, None, out=slot) is slot and torch.equal(slot, expected)
    assert torch.equal(first, decode_clip(train, clips[0], np.random.default_rng(0)))  # the buffer's reuse left it
    with pytest.raises(RecordError, match="record 'v': sampled frame 2: 12x32 pixels where 24x32 were expected"):
        decode_clip(train, [_jpeg(0), _jpeg(1), _jpeg(2, h=12)], np.random.default_rng(0), "db", "v")


def test_corrupt_record_fails_or_is_skipped(tiny_videos, tmp_path):
    import shutil
    shutil.copytree(tiny_videos / "val.lmdb", tmp_path / "bad.lmdb")
    db = VideoDB(tmp_path / "bad.lmdb")
    key = db.index.keys[1]
    header, jpegs = db.read(1)
    broken = [b"\xff\xd8" + b"\x00" * (len(j) - 2) for j in jpegs]  # right sizes, unreadable pixels
    _raw_put(tmp_path / "bad.lmdb", key.encode(), encode_record(broken, list(header.labels), 32, 32, key))
    _raw_put(tmp_path / "bad.lmdb", db.index.keys[2].encode(), b"VIQR\x01\x00\x00\x00")  # truncated
    spec = ClipSpec(train=False, segments=4, size=24, scale_size=32)
    with pytest.raises(RecordError, match=f"record '{key}': sampled frame 0: undecodable"):
        VideoClipDataset(str(tmp_path / "bad.lmdb"), spec)[1]
    with pytest.raises(RecordError, match="truncated"):
        VideoClipDataset(str(tmp_path / "bad.lmdb"), spec)[2]
    skipping = VideoClipDataset(str(tmp_path / "bad.lmdb"), ClipSpec(**{**spec.__dict__, "on_error": "skip"}))
    loader = torch.utils.data.DataLoader(skipping, batch_size=8)
    batch = next(iter(loader))
    assert batch["valid"].tolist() == [True, False, False] + [True] * 5
    assert batch["video"][1].count_nonzero() == 0 and batch["label"][1] == -1


def test_a_record_reads_without_videoiq_as_the_readme_shows(tiny_videos):
    import struct

    forget(str(tiny_videos / "val.lmdb"))  # py-lmdb refuses a second open in one process
    env = lmdb.open(str(tiny_videos / "val.lmdb"), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            index = msgpack.unpackb(txn.get(b"__index__"))
            meta = msgpack.unpackb(txn.get(b"__meta__"))
            value = txn.get(index["keys"][0].encode())
    finally:
        env.close()
    magic, version, n = struct.unpack_from("<4sII", value)
    header = msgpack.unpackb(value[12:12 + n])
    first = value[12 + n:12 + n + header["sizes"][0]]
    assert (magic, version, meta["format"], meta["version"]) == (b"VIQR", 1, "videoiq-lmdb", 1)
    assert header["labels"] == index["labels"][0] and len(header["sizes"]) == index["num_frames"][0]
    assert np.asarray(Image.open(io.BytesIO(first))).shape == (header["height"], header["width"], 3)
