"""``videoiq data ...`` and ``videoiq bench data`` as a user runs them."""
import pytest

from videoiq.cli import main
from videoiq.data.records import VideoDB


def test_synth_build_inspect_round_trip(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["data", "synth", str(out), "--classes", "3", "--train-per-class", "2", "--val-per-class", "1",
                 "--size", "32", "--min-frames", "6", "--max-frames", "8", "--shots", "3", "--source", "frames",
                 "--workers", "1"]) == 0
    assert "train.lmdb: 6 videos" in capsys.readouterr().out
    # The frames written by synth convert again through the CLI, with the count checked against --classes.
    assert main(["data", "build", "frames", "--list", str(out / "val.txt"), "--root", str(out),
                 "--out", str(tmp_path / "again.lmdb"), "--classes", str(out / "classes.txt"), "--workers", "2",
                 "--split", "val"]) == 0
    assert "again.lmdb: 3 videos" in capsys.readouterr().out
    assert VideoDB(tmp_path / "again.lmdb").index.keys == VideoDB(out / "val.lmdb").index.keys
    sheet = tmp_path / "sheet.png"
    assert main(["data", "inspect", str(tmp_path / "again.lmdb"), "--sheet", str(sheet), "--clips", "2"]) == 0
    text = capsys.readouterr().out
    assert "videos       3" in text and "red_cyan" in text and "contact sheet of 2 clips x 8 frames" in text
    assert sheet.stat().st_size > 1000


def test_build_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "l.txt").write_text("a 1 5 0\nb 1 x 0\n")
    assert main(["data", "build", "frames", "--list", str(tmp_path / "l.txt"), "--root", str(tmp_path),
                 "--out", str(tmp_path / "o.lmdb")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("videoiq: error: ") and "line 2: frame numbers" in err and "Traceback" not in err
    assert main(["data", "build", "frames", "--list", str(tmp_path / "l.txt"), "--root", str(tmp_path),
                 "--out", str(tmp_path / "o.lmdb"), "--dataset", "activitynet"]) == 2
    assert "line 2" in capsys.readouterr().err
    (tmp_path / "m.txt").write_text("a 1 5 0\n")
    assert main(["data", "build", "frames", "--list", str(tmp_path / "m.txt"), "--root", str(tmp_path),
                 "--out", str(tmp_path / "o.lmdb"), "--dataset", "activitynet"]) == 2
    assert "1 classes, but activitynet has 200" in capsys.readouterr().err
    # with --classes, a non-integer label and an out-of-range one are named together, with their lines
    (tmp_path / "c.txt").write_text("x\ny\n")
    (tmp_path / "n.txt").write_text("a 1 5 0\nb 1 5 one\nc 1 5 2\n")
    assert main(["data", "build", "frames", "--list", str(tmp_path / "n.txt"), "--root", str(tmp_path),
                 "--classes", str(tmp_path / "c.txt"), "--out", str(tmp_path / "o.lmdb")]) == 2
    err = capsys.readouterr().err
    assert "2 bad line(s)" in err and "line 2: labels must be integers" in err
    assert "line 3: label(s) [2] outside 0..1" in err
    assert main(["data", "inspect", str(tmp_path / "none.lmdb")]) == 2
    assert "no such database directory" in capsys.readouterr().err


@pytest.mark.ray
def test_bench_data_prints_every_pipeline(ray_local, tiny_videos, capsys):
    assert main(["bench", "data", str(tiny_videos / "train.lmdb"), "--frames", "4", "--size", "24",
                 "--batch-size", "4", "--epochs", "1", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("decode only (1 process)", "samples (1 process)", "PyTorch DataLoader (1 workers)", "Ray Data (1 CPUs)",
                "Ray Data, seeded (1 CPUs)", "Ray Data / decode-only per core"):
        assert row in out
    assert "16 videos x 4 frames" in out
