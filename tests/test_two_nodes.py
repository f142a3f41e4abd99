"""A stage on a two-node Ray cluster: one Train worker per node, Ray Data reading on both, one shared run folder;
one node killed mid-run and the run finished from its last checkpoint with every epoch once.

The cluster (``two_node_cluster.py``) and the driver (the ``launch/fp.py`` launcher, as ``ray job submit`` runs
it) are processes of their own: this session's Ray (``ray_local``) stays out of it.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from videoiq.config import config_to_dict
from videoiq.ray.data import read_counts
from videoiq.train.checkpoint import load_checkpoint

from helpers import free_port, stage_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3


class TwoNodes:
    """The helper process that owns the cluster: ``info`` (address, node ids), ``env`` (a driver's environment)
    and ``ask(command)``."""

    def __init__(self, env: dict[str, str], gcs_port: int, dashboard_port: int, agent_port: int):
        ports = [str(p) for p in (gcs_port, dashboard_port, agent_port)]
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


@pytest.fixture
def two_nodes():
    """A head and a worker node, 2 CPUs each, in a Ray temp folder of their own; stopped even on failure."""
    temp = tempfile.mkdtemp(prefix="viq2n", dir="/tmp")  # short: Ray's socket paths live under it
    dashboard = free_port()
    env = {**os.environ, "RAY_TMPDIR": temp, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard}"}
    env.pop("RAY_ADDRESS", None)
    cluster = None
    try:
        cluster = TwoNodes(env, free_port(), dashboard, free_port())
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)


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
