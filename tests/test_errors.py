"""A user's mistake is one line; a bug shows its traceback and says it is a bug: in-process and on Ray Train.
A damaged database is one line at open, before any training or Ray worker starts."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from videoiq.cli import main
from videoiq.data.records import DatabaseError, VideoDB, forget
from videoiq.dispatch import run_config
from videoiq.errors import RemoteBug, run_guarded

from helpers import QUIET, copy_data, garble_record, stage_config

ROOT = Path(__file__).resolve().parent.parent


def _fp(root, runs, name, workers=0, **sections):
    return stage_config("fp", root, model={"name": "resnet_tiny"}, run={"storage_path": str(runs), "name": name},
                        ray={"num_workers": workers}, **sections)


def _truncated(tiny_videos, tmp_path):
    data = copy_data(tiny_videos, tmp_path / "cut")
    mdb = data / "train.lmdb" / "data.mdb"
    os.truncate(mdb, mdb.stat().st_size // 2)
    forget(str(data / "train.lmdb"))
    return data, mdb


def test_a_truncated_database_is_one_line_at_open_naming_the_file(tiny_videos, tmp_path, capsys):
    data, mdb = _truncated(tiny_videos, tmp_path)
    with pytest.raises(DatabaseError, match=rf"^{mdb}: truncated: the database uses [\d,]+ bytes, the file has"):
        VideoDB(data / "train.lmdb")
    assert main(["data", "inspect", str(data / "train.lmdb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"videoiq: error: {mdb}: truncated"), err
    assert run_guarded(lambda: run_config(_fp(data, tmp_path / "runs", "cut"), printer=QUIET) and 0) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(mdb) in err[0], err
    assert not (tmp_path / "runs" / "cut" / "checkpoint.pt").exists()


def test_a_bug_in_process_prints_its_traceback_and_says_it_is_a_bug(tiny_videos, tmp_path, monkeypatch, capsys):
    import videoiq.train.session as session

    def broken_build(*args, **kwargs):
        return {}["a key the code expected"]  # what a bug looks like: not the user's, and no videoiq error

    monkeypatch.setattr(session, "build_stage", broken_build)
    assert run_guarded(lambda: run_config(_fp(tiny_videos, tmp_path, "bug"), printer=QUIET) and 0) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "Traceback (most recent call last):" and any("broken_build" in line for line in err), err
    assert err[-1].startswith("videoiq: internal error: KeyError: 'a key the code expected'. This is a bug in "
                              "videoiq"), err[-1]


def loop_with_a_bug(config):
    """A Ray Train worker's loop whose stage session has a bug (runs in the worker, imported from this module)."""
    import videoiq.ray.train as ray_train

    def session_with_a_bug(*args, **kwargs):
        return [][3]

    ray_train.run_session = session_with_a_bug
    return ray_train.train_loop_per_worker(config)


@pytest.mark.ray
def test_a_bug_in_a_train_worker_shows_the_workers_traceback(ray_local, tiny_videos, tmp_path, monkeypatch, capsys):
    import videoiq.ray.train as ray_train

    monkeypatch.setattr(ray_train, "train_loop_per_worker", loop_with_a_bug)
    with pytest.raises(RemoteBug) as info:
        run_config(_fp(tiny_videos, tmp_path, "bug", workers=1), printer=QUIET)
    bug = info.value
    assert bug.message == "IndexError: list index out of range"
    assert "session_with_a_bug" in bug.worker_traceback and Path(bug.log).parent == tmp_path / "bug" / "errors"

    def fails_as_on_ray() -> int:
        raise bug

    assert run_guarded(fails_as_on_ray) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "Traceback (most recent call last):" and any("session_with_a_bug" in x for x in err), err
    assert err[-1].startswith("videoiq: internal error: IndexError: list index out of range. This is a bug") and \
        bug.log in err[-1], err[-1]


@pytest.mark.ray
@pytest.mark.slow
def test_a_users_error_on_ray_ends_with_its_one_line_and_leaves_home_as_it_was(tiny_videos, tmp_path):
    """`videoiq run` of a Ray stage with its own local Ray: a garbled record ends in one `videoiq: error:` line,
    last, with none of Ray's tracebacks on the terminal; a truncated database stops before Ray starts; and the
    user's ~/.ray is not touched."""
    bad = copy_data(tiny_videos, tmp_path / "bad")
    key = garble_record(bad / "train.lmdb", 0)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(HOME=str(home), WANDB_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    command = [sys.executable, "-m", "videoiq", "run", "--config", str(ROOT / "launch/configs/demo/fp.yaml"), "--set",
               f"data.root={bad}", "data.num_frames=4", "data.input_size=32", "optim.epochs=1",
               "ray.num_workers=1", "ray.cpus_per_worker=1", f"run.storage_path={tmp_path / 'runs'}",
               "model.name=resnet_tiny"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2, out
    assert out[-1].startswith("videoiq: error: ") and key in out[-1] and "undecodable image" in out[-1], out
    assert sum("videoiq: error:" in line for line in out) == 1 and not any("Traceback" in x for x in out), out
    assert len(out) < 12, out
    assert not (home / ".ray").exists()

    cut, mdb = _truncated(tiny_videos, tmp_path)
    command[command.index(f"data.root={bad}")] = f"data.root={cut}"
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(out) == 1 and out[0].startswith(f"videoiq: error: {mdb}: truncated"), out
