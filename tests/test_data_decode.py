"""Honest decoding: a video that decodes to fewer frames than its container declares is kept, measured and named
(build summary, record header, ``__meta__``, ``data inspect``, ``predict``), and a whole file never is."""
import os
from fractions import Fraction

import av
import numpy as np
import pytest

from videoiq.cli import main
from videoiq.data import build, lists
from videoiq.data.codec import read_video, scan_video
from videoiq.data.inspect import describe
from videoiq.data.records import VideoDB

QUIET = open(os.devnull, "w")
FRAMES = 64


def write_test_video(path, frames=FRAMES, fps=25, codec="libx264", size=32, options=None):
    """A small video whose frames differ (a moving noise block), written with PyAV; ``options`` go to the muxer."""
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.height = stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            pixels = np.full((size, size, 3), (5 * i) % 256, np.uint8)
            pixels[(i % 4) * 8:(i % 4) * 8 + 8, :8] = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


def damaged_set(root):
    """``whole.mp4``, ``half.mp4`` (the file's bytes cut in half) and ``garbage.mp4`` (a tenth of its bytes
    overwritten with noise mid-file), as a download cut short or a damaged copy would be. The mp4s carry
    their index up front (faststart), as streamed files do, so the cut one still opens."""
    root.mkdir(parents=True, exist_ok=True)
    write_test_video(root / "whole.mp4", options={"movflags": "faststart"})
    data = (root / "whole.mp4").read_bytes()
    (root / "half.mp4").write_bytes(data[: len(data) // 2])
    noise = np.random.default_rng(1).integers(0, 256, len(data) // 10, dtype=np.uint8).tobytes()
    middle = len(data) // 2
    (root / "garbage.mp4").write_bytes(data[:middle] + noise + data[middle + len(noise):])
    (root / "list.txt").write_text("whole.mp4 0\nhalf.mp4 1\ngarbage.mp4 1\n")
    return root


@pytest.mark.parametrize("name, codec, options", [("h264.mp4", "libx264", None),
                                                  ("faststart.mp4", "libx264", {"movflags": "faststart"}),
                                                  ("mpeg4.avi", "mpeg4", None), ("vp9.webm", "libvpx-vp9", None),
                                                  ("h264.mkv", "libx264", None)])
def test_whole_files_decode_as_declared(tmp_path, name, codec, options):
    # webm and mkv count no frames: their duration times the frame rate is what they declare
    write_test_video(tmp_path / name, frames=40, codec=codec, options=options)
    check = scan_video(str(tmp_path / name))
    assert (check.declared_frames, check.decoded_frames, check.lost, check.short()) == (40, 40, 0.0, False)
    video = read_video(str(tmp_path / name), fps=5)
    assert len(list(video)) == 8 and video.check == check  # resampling does not change what counts as decoded


@pytest.mark.parametrize("name, codec", [("h264.mp4", "libx264"), ("h264.ts", "libx264"), ("vp9.webm", "libvpx-vp9"),
                                         ("mpeg4.avi", "mpeg4")])
def test_a_time_span_decodes_exactly_its_frames(tmp_path, name, codec):
    # MPEG-TS starts its timestamps late and seeks past the target: spans count from the first timestamp,
    # and a seek that lands late starts again from the top
    write_test_video(tmp_path / name, frames=75, codec=codec)
    video = read_video(str(tmp_path / name), span=(1.0, 2.0))
    frames = list(video)
    assert len(frames) == 25 and (video.check.declared_frames, video.check.decoded_frames) == (25, 25)
    assert abs(int(frames[0][-1, -1, 0]) - 5 * 25) <= 6  # the shade of frame 25, the one at 1.0 s


def test_a_longer_audio_track_is_not_counted_as_lost(tmp_path):
    # mkv and webm declare no frame count; the container's duration is the longest stream's (here 3 s of
    # audio against 2 s of video), so the video stream's own DURATION tag is what counts
    path = str(tmp_path / "talk.mkv")
    with av.open(path, mode="w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        for i in range(50):
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), i, np.uint8), format="rgb24")))
        container.mux(video.encode())
        for k in range(3 * 16000 // 1024):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 16000, 1024 * k
            container.mux(audio.encode(samples))
        container.mux(audio.encode())
    with av.open(path) as container:
        assert container.duration / 1e6 > 2.9  # what a container-level duration would have compared with
    check = scan_video(path)
    assert (check.declared_frames, check.decoded_frames, check.short()) == (50, 50, False)


def test_a_variable_frame_rate_video_is_judged_by_its_timestamps(tmp_path):
    """An AVI that holds 14 frames at irregular times over 10 s declares 151 frame slots (one per 1/15 s);
    every packet is whole, so nothing is lost: the decoded time span is the file's whole length."""
    path = str(tmp_path / "vfr.avi")
    times = [0, 1, 2, 10, 20, 21, 40, 60, 80, 100, 101, 102, 130, 150]
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=15)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 15)
        for t in times:
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), t, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 15)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    check = scan_video(path)
    assert check.decoded_frames == len(times) and check.declared_frames > 100
    assert not check.short() and check.damaged_packets == 0
    assert "0% lost" in check.describe() and f"decoded {len(times)} of" in check.describe()
    items = [lists.SourceVideo(key="vfr", path=path, labels=(0,))]
    report = build.build_videos(str(tmp_path / "o.lmdb"), items, ["a"], short_side=32, strict=True, stream=QUIET)
    assert report.converted == 1 and not report.short  # --strict keeps an intact file


def test_damaged_videos_are_kept_measured_and_named(tmp_path):
    root = damaged_set(tmp_path / "v")
    half, garbage = scan_video(str(root / "half.mp4")), scan_video(str(root / "garbage.mp4"))
    assert half.declared_frames == garbage.declared_frames == FRAMES
    assert half.short() and garbage.short()
    assert half.decoded_frames < FRAMES // 2 + 8 and garbage.decoded_frames < FRAMES

    items = lists.parse_video_list(str(root / "list.txt"), str(root))
    report = build.build_videos(str(tmp_path / "o.lmdb"), items, ["a", "b"], short_side=32, stream=QUIET)
    assert report.converted == 3 and not report.skipped
    assert [key for key, _ in report.short] == ["half", "garbage"]
    text = report.summary()
    assert "0 skipped, 2 decoded short" in text
    assert f"short half: decoded {half.decoded_frames} of {FRAMES} frames" in text and "% lost" in text

    db = VideoDB(tmp_path / "o.lmdb")
    loss = db.meta["decode_loss"]
    assert loss["max_loss"] == 0.05 and sorted(loss["short"]) == ["garbage", "half"]
    assert loss["short"]["half"]["decoded_frames"] == half.decoded_frames == db.index.num_frames[1]
    assert loss["short"]["half"]["declared_seconds"] == pytest.approx(FRAMES / 25)
    whole = db.read(0)[0].decode
    assert (whole["declared_frames"], whole["decoded_frames"], whole["lost"]) == (FRAMES, FRAMES, 0)
    again = build.build_videos(str(tmp_path / "o.lmdb"), items, ["a", "b"], short_side=32, stream=QUIET)
    assert again.already_present == 3 and again.short == report.short  # a resumed build still names them
    sheet = describe(db)
    assert "decoded short 2 videos lost more than 5%" in sheet and f"  half: decoded {half.decoded_frames} of" in sheet

    # a looser threshold names none of them; strict refuses the first one over it, like any bad input
    loose = build.build_videos(str(tmp_path / "loose.lmdb"), items, ["a", "b"], short_side=32, max_loss=0.9,
                               stream=QUIET)
    assert loose.short == [] and "0 decoded short" in loose.summary()
    with pytest.raises(build.BuildError, match=r"half.mp4: decoded \d+ of 64 frames .* more than --max-loss 5%"):
        build.build_videos(str(tmp_path / "s.lmdb"), items, ["a", "b"], short_side=32, strict=True, stream=QUIET)


def test_build_cli_takes_max_loss_and_refuses_a_bad_one(tmp_path, capsys):
    root = damaged_set(tmp_path / "v")
    args = ["data", "build", "videos", "--list", str(root / "list.txt"), "--root", str(root), "--short-side", "32",
            "--workers", "1"]
    assert main(args + ["--out", str(tmp_path / "a.lmdb"), "--max-loss", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "2 decoded short" in out and "more than --max-loss 2%" in out
    assert main(args + ["--out", str(tmp_path / "b.lmdb"), "--max-loss", "5"]) == 2
    assert "max_loss must be a fraction in [0, 1), got 5" in capsys.readouterr().err
