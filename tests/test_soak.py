"""Soak profile (not in the default run; `make soak`): many short epochs on 2 Ray Train workers, workers
killed at random times, and the result checked against an uninterrupted run's epoch count and data coverage."""
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from videoiq.train.checkpoint import load_checkpoint

from helpers import QUIET, stage_config

pytestmark = [pytest.mark.soak, pytest.mark.ray]

EPOCHS, KILLS = 12, 4


def train_worker_pids():
    """PIDs of this machine's Ray Train worker processes (their process titles name the actor)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"RayTrainWorker" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _run(tiny_videos, storage, name, max_failures):
    from videoiq.dispatch import run_config

    cfg = stage_config("fp", tiny_videos, model={"name": "resnet_tiny"}, optim={"epochs": EPOCHS},
                       run={"storage_path": str(storage), "name": name},
                       ray={"num_workers": 2, "max_failures": max_failures})
    path, metrics = run_config(cfg, printer=QUIET).values()
    lines = [json.loads(x) for x in (storage / name / "metrics.jsonl").read_text().splitlines()]
    return load_checkpoint(path), metrics, lines


def test_random_worker_kills_lose_and_repeat_nothing(ray_local, tiny_videos, tmp_path):
    clean_ckpt, clean, clean_lines = _run(tiny_videos, tmp_path, "clean", 0)
    kills, stop = [], threading.Event()
    rng = random.Random(0)

    def killer():
        while len(kills) < KILLS and not stop.is_set():
            time.sleep(rng.uniform(2.0, 8.0))
            pids = train_worker_pids()
            if pids:
                victim = rng.choice(pids)
                os.kill(victim, signal.SIGKILL)
                kills.append(victim)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    ckpt, metrics, lines = _run(tiny_videos, tmp_path, "killed", KILLS)
    stop.set()
    assert kills, "no worker was killed"
    assert ckpt["epoch"] == clean_ckpt["epoch"] == EPOCHS and metrics["epoch"] == clean["epoch"]
    assert [x["epoch"] for x in lines] == [x["epoch"] for x in clean_lines] == [float(e) for e in range(1, EPOCHS + 1)]
    # data coverage: every epoch of both runs trained on the whole set and validated on all of it
    assert [x["train/videos"] for x in lines] == [x["train/videos"] for x in clean_lines] == [16.0] * EPOCHS
    assert all(x["val/videos"] == 8.0 for x in lines)
    assert set(ckpt["models"]["model"]["state_dict"]) == set(clean_ckpt["models"]["model"]["state_dict"])
