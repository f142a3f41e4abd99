"""A stage on a two-node Ray cluster: one Train worker per node, Ray Data reading on both, one shared run folder;
one node killed mid-run and the run finished from its last checkpoint with every epoch once. A sharded build
over both nodes that loses one, a stage that reads each node's own shards from its local disk, and ``infer``
losing its model actor mid-run.

The cluster (``two_node_cluster.py``) and the driver (the ``launch/fp.py`` launcher, as ``ray job submit`` runs
it) are processes of their own: this session's Ray (``ray_local``) stays out of it.
"""
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from videoiq.config import config_to_dict
from videoiq.data.shards import open_split
from videoiq.ray.data import read_counts, read_shards
from videoiq.train.checkpoint import load_checkpoint

from helpers import free_port, stage_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3


class TwoNodes:
    """The helper process that owns the cluster: ``info`` (address, node ids), ``env`` (a driver's environment)
    and ``ask(command)``."""

    def __init__(self, env: dict[str, str], gcs_port: int, dashboard_port: int, agent_port: int,
                 node_env: dict[str, dict[str, str]] | None = None):
        ports = [str(p) for p in (gcs_port, dashboard_port, agent_port)] + [json.dumps(node_env or {})]
        # Its own session: a Ctrl-C or SIGTERM meant for the tests does not reach it (Ray's SIGTERM handler there
        # waits for the nodes to drain); the test's teardown, or the test process's death, ends its input instead.
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("two_node_cluster.py")), *ports],
                                        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        start_new_session=True)
        self.info = self._answer()
        self.env = {**env, "RAY_ADDRESS": self.info["address"]}

    def _answer(self):
        line = self.process.stdout.readline()  # the helper answers every command, or exits (EOF)
        assert line, f"the cluster helper exited with {self.process.wait()}"
        return json.loads(line)

    def ask(self, command: str):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._answer()

    def stop(self) -> None:
        self.process.stdin.close()  # end of input: the helper shuts the cluster down
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()  # its node processes share its fate
            self.process.wait()


@contextlib.contextmanager
def cluster_of_two(node_env: dict[str, dict[str, str]] | None = None):
    """A head and a worker node, 2 CPUs each, in a Ray temp folder of their own; stopped even on failure."""
    temp = tempfile.mkdtemp(prefix="viq2n", dir="/tmp")  # short: Ray's socket paths live under it
    dashboard = free_port()
    env = {**os.environ, "RAY_TMPDIR": temp, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard}"}
    env.pop("RAY_ADDRESS", None)
    cluster = None
    try:
        cluster = TwoNodes(env, free_port(), dashboard, free_port(), node_env)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def two_nodes():
    with cluster_of_two() as cluster:
        yield cluster


def test_a_stage_on_two_nodes_survives_losing_one(two_nodes, tiny_videos, tmp_path):
    shared = tmp_path / "shared"  # both nodes' storage: a cluster's NFS mount
    cfg = stage_config("fp", tiny_videos, model={"name": "resnet_tiny"}, optim={"epochs": EPOCHS},
                       logging={"wandb": "disabled"},  # no wandb service process to start on a busy machine
                       run={"storage_path": str(shared / "runs"), "name": "fp"},
                       ray={"num_workers": 2, "placement_strategy": "STRICT_SPREAD", "max_failures": 1})
    config = tmp_path / "fp.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(cfg)))
    run = shared / "runs" / "fp"
    head, first_worker = two_nodes.info["head"], two_nodes.info["worker"]
    started = time.time()
    driver = subprocess.Popen([sys.executable, "launch/fp.py", "--config", str(config)], cwd=ROOT,
                              env=two_nodes.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Ray Train has registered the first checkpoint (metrics.jsonl gets its line a moment before): kill now
        while not (run / "checkpoint_manager_snapshot.json").exists():
            assert driver.poll() is None and time.time() < started + 120, "no epoch was checkpointed"
            time.sleep(0.05)
        lost = two_nodes.ask("kill")
        out, _ = driver.communicate(timeout=150)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    (tmp_path / "driver.log").write_text(out)  # whole, for a failure's diagnosis; messages show its end
    assert driver.returncode == 0, out[-4000:]

    # one worker per node, before the kill on the two first nodes, after it on the head and the replacement
    workers = [w["node"] for w in two_nodes.ask("workers")]
    assert lost["killed"] == first_worker and len(workers) == 4, workers
    assert sorted(workers[:2]) == sorted([head, first_worker]), workers
    assert sorted(workers[2:]) == sorted([head, lost["added"]]), workers
    # the kill came mid-run: the new group resumed from the checkpoint of an epoch before the last
    resumed = re.findall(rf"fp: resuming {re.escape(str(run))} after epoch (\d+)", out)
    assert len(resumed) == 1 and 1 <= int(resumed[0]) < EPOCHS, out[-4000:]
    # each epoch once, nothing lost: the last checkpoint has every epoch and loads
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [float(e) for e in range(1, EPOCHS + 1)]
    assert all(x["train/videos"] == 16.0 for x in lines)  # every epoch saw the whole training set
    assert load_checkpoint(run)["epoch"] == EPOCHS
    # Ray Data read tasks ran on both first nodes, and wrote their record to the one shared run folder
    reads = read_counts(run / "reads")
    assert reads.get(head, 0) > 0 and reads.get(first_worker, 0) > 0, reads
    assert sum(reads.values()) >= 16 * EPOCHS, reads


def _build_command(source, out, *extra):
    return [sys.executable, "-m", "videoiq", "data", "build", "videos", "--root", str(source), "--list",
            str(source / "train.txt"), "--classes", str(source / "classes.txt"), "--out", str(out), "--short-side",
            "0", *extra]


def test_a_shard_build_on_two_nodes_finishes_after_losing_one(two_nodes, tiny_videos, tmp_path):
    out = tmp_path / "shared" / "train.lmdb"  # on storage both nodes and the driver see
    command = _build_command(tiny_videos, out, "--shards", "8", "--ray")
    started = time.time()
    driver = subprocess.Popen(command, env=two_nodes.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not (out.is_dir() and any(".partial-" in n for n in os.listdir(out))):  # shards being written
            assert driver.poll() is None and time.time() < started + 120, "no shard was started"
            time.sleep(0.02)
        two_nodes.ask("kill")
        first, _ = driver.communicate(timeout=150)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    # Ray retries the lost tasks, or the build stops; either way the same command finishes it
    again = subprocess.run(command, env=two_nodes.env, capture_output=True, text=True, timeout=150)
    assert again.returncode == 0, first[-3000:] + again.stdout[-2000:] + again.stderr[-2000:]
    assert "16 videos, " in again.stdout and "in 8 shards" in again.stdout
    assert not any(".partial-" in n for n in os.listdir(out))
    # record for record what one process builds
    one = tmp_path / "one.lmdb"
    subprocess.run(_build_command(tiny_videos, one, "--workers", "1"), check=True, capture_output=True)
    split, single = open_split(out), open_split(one)
    assert split.index == single.index
    assert all(split.read(i) == single.read(i) for i in range(len(single)))
    local = tmp_path / "local.lmdb"  # and the same shards as a local sharded build
    subprocess.run(_build_command(tiny_videos, local, "--shards", "8"), check=True, capture_output=True)
    assert open_split(local).fingerprint == split.fingerprint


def test_a_stage_reads_node_local_shards_where_they_lie(tiny_videos, tmp_path):
    root = tmp_path / "data"  # the config's data.root: the manifest and index only, no shard
    root.mkdir()
    shutil.copytree(tiny_videos / "val.lmdb", root / "val.lmdb")  # validation: read whole by every worker, shared
    subprocess.run(_build_command(tiny_videos, root / "train.lmdb", "--shards", "4"), check=True,
                   capture_output=True)
    split = open_split(root / "train.lmdb")
    disks = {"head": tmp_path / "head_disk", "worker": tmp_path / "worker_disk"}  # each node's local disk
    holds = {"head": ["shard-00000.lmdb", "shard-00002.lmdb"], "worker": ["shard-00001.lmdb", "shard-00003.lmdb"]}
    for node, disk in disks.items():
        (disk / "train.lmdb").mkdir(parents=True)
        for name in ["manifest.json", "index.msgpack", *holds[node]]:
            move = shutil.copytree if name.startswith("shard-") else shutil.copy
            move(root / "train.lmdb" / name, disk / "train.lmdb" / name)
    for name in holds["head"] + holds["worker"]:
        shutil.rmtree(root / "train.lmdb" / name)
    node_env = {node: {"VIDEOIQ_PATH_MAP": f"{root / 'train.lmdb'}={disk / 'train.lmdb'}"}
                for node, disk in disks.items()}
    cfg = stage_config("fp", root, model={"name": "resnet_tiny"}, optim={"epochs": 2}, logging={"wandb": "disabled"},
                       run={"storage_path": str(tmp_path / "runs"), "name": "fp"},
                       ray={"num_workers": 2, "placement_strategy": "STRICT_SPREAD"})
    config = tmp_path / "fp.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(cfg)))
    with cluster_of_two(node_env) as cluster:
        done = subprocess.run([sys.executable, "launch/fp.py", "--config", str(config)], cwd=ROOT, env=cluster.env,
                              capture_output=True, text=True, timeout=300)
        nodes = {"head": cluster.info["head"], "worker": cluster.info["worker"]}
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    videos = {s.name: s.videos for s in split.shards}
    epochs = read_shards(tmp_path / "runs" / "fp" / "reads")
    assert len(epochs) == 2, epochs
    for reads in epochs.values():  # each node read its own shards, every video once an epoch
        assert reads == {nodes[n]: {name: videos[name] for name in holds[n]} for n in nodes}, reads


def _processes(title: str) -> list[int]:
    """The pids of this machine's processes whose command line holds ``title``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if title in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:  # a process that ended meanwhile
                pass
    return found


def test_infer_loses_its_model_actor_mid_run_and_holds_every_video_once(two_nodes, trained_stages, tiny_videos,
                                                                        tmp_path):
    runs, _ = trained_stages
    videos = tmp_path / "videos"  # a collection long enough to kill its model actor halfway: 600 files
    videos.mkdir()
    sources = sorted((tiny_videos / "videos").rglob("*.mp4"))
    for i in range(600):
        (videos / f"{i:04d}.mp4").symlink_to(sources[i % len(sources)])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "videoiq", "infer", str(runs / "policy"), "--input", str(videos), "--out",
               str(out), "--actors", "1", "--batch-size", "2", "--part-size", "10"]
    started = time.time()
    driver = subprocess.Popen(command, env=two_nodes.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=ROOT)
    try:
        while not (out / "part-00001.parquet").exists():  # 20 videos classified
            assert driver.poll() is None and time.time() < started + 120, "no part was written"
            time.sleep(0.02)
        actors = _processes("MapWorker(MapBatches(Classifier))")  # Ray names an actor's process after its class
        assert len(actors) == 1, actors
        os.kill(actors[0], signal.SIGKILL)  # both raylets run on this machine
        assert driver.poll() is None, "the run ended before its actor was killed"
        parts_at_kill = len(list(out.glob("part-*.parquet")))
        first, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert parts_at_kill < 60
    # Ray Data restarts the actor and runs its lost batches again: the run finishes; the same command has nothing left
    assert driver.returncode == 0 and "600/600 videos" in first, first[-3000:]
    again = subprocess.run(command, env=two_nodes.env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0 and "600 already in" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    keys = [k for part in sorted(out.glob("part-*.parquet")) for k in pq.read_table(part, columns=["key"])["key"]
            .to_pylist()]
    assert len(keys) == 600 and set(keys) == {f"{i:04d}.mp4" for i in range(600)}  # every video exactly once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos"] == 600 and summary["errors"] == 0
