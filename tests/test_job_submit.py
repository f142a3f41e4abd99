"""`ray job submit` of a launcher to a real `ray start --head` cluster, as the README and `make demo` do it."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import free_port

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ray_job_submit_runs_a_stage(tiny_videos, tmp_path):
    port, dash, agent = free_port(), free_port(), free_port()
    address = f"http://127.0.0.1:{dash}"
    # every process of this cluster asks its own dashboard (as launch/demo.sh and docs/ray.md start a head),
    # not the session's Ray (ray_local), whose processes are told theirs
    env = {**os.environ, "RAY_API_SERVER_ADDRESS": address}
    head = subprocess.Popen(  # its own agent port: the test session's Ray already holds the default one
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--dashboard-agent-listen-port", str(agent),
         "--num-cpus", "4", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # its own process group
    try:
        deadline = time.time() + 120
        # ready when a trivial job runs: the job server answers before the node's job agent takes jobs
        while subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--", "true"],
                             env=env, capture_output=True).returncode:
            assert time.time() < deadline and head.poll() is None, "the Ray head did not come up"
            time.sleep(1)
        job = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
             sys.executable, "launch/fp.py", "--config", "launch/configs/demo/fp.yaml", "--set",
             f"data.root={tiny_videos}", "data.num_frames=4", "data.input_size=32", "optim.epochs=1",
             "ray.cpus_per_worker=1", f"run.storage_path={tmp_path}", "logging.log_every=1"],
            env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        out = job.stdout + job.stderr
        assert "succeeded" in out and "fp: epoch=1 " in out
        assert re.search(r"fp: epoch 1 step 1/\d+ loss=\S+ lr=\S+ [\d.]+ videos/s, epoch ends in \d+ s",
                         out), out[-3000:]
        # the job's own log is the stage's lines and its result: nothing of Ray Data, Train or wandb
        lines = job.stdout.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("Running entrypoint for job "))
        end = next(i for i, line in enumerate(lines) if "succeeded" in line) - 1  # Ray's rule above its verdict
        said = lines[start + 1:end]
        result = next(i for i, line in enumerate(said) if line == "{")
        assert all(line.startswith("fp: ") for line in said[:result]) and result == 3, "\n".join(said)
        assert json.loads("\n".join(said[result:]))["metrics"]["epoch"] == 1
        # a log a person reads: no Ray Data progress bars or execution banners, no wandb banners
        assert "Running Dataset" not in out and "row/s" not in out and "wandb:" not in out, out[-3000:]
        assert "Reporting training result" not in out and "Checkpoint successfully created" not in out, out[-3000:]
        checkpoints = list((tmp_path / "fp").glob("checkpoint_*/checkpoint.pt"))
        assert len(checkpoints) == 1 and (tmp_path / "fp" / "metrics.jsonl").exists()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
