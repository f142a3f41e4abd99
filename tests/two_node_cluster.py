"""A two-node Ray cluster on this machine for ``test_two_nodes.py``, owned by this process.

Its own process because the test session already holds a Ray (``ray_local``) and ``Cluster.shutdown`` resets
the calling process's Ray state. Run as ``python two_node_cluster.py GCS_PORT DASHBOARD_PORT AGENT_PORT [ENV]`` with
``RAY_TMPDIR`` set to a folder of the test's (Ray writes its sessions and ``ray_current_cluster`` there, not in
the machine's shared /tmp/ray) and ``RAY_API_SERVER_ADDRESS`` naming the dashboard port (every process of the
cluster then asks its own dashboard, see ``conftest.ray_local``). ``ENV``, a JSON ``{"head": {...}, "worker":
{...}}``, adds environment variables to a node's processes (the worker's to its replacements too).

It prints one JSON line once both nodes are up, ``{"address", "head", "worker"}`` (node ids), then answers one
JSON line per command read from stdin:

* ``kill``: SIGKILLs every process of the worker node (no drain, as when a machine dies) and adds a
  replacement node of the same size, as an autoscaler would: ``{"killed", "added"}``;
* ``workers``: the Ray Train worker actors the cluster has had, oldest first: ``[{"node", "state"}, ...]``.

End of input (``stop``, or the test process gone) shuts the whole cluster down; its node processes share this
process's fate, so a killed helper leaves none behind.
"""
import json
import sys

from ray.cluster_utils import Cluster

# Each node: one Train worker's CPU and one for the Ray Data read tasks.
NODE = {"num_cpus": 2, "object_store_memory": 200 * 2**20}
# The GCS declares a silent node dead after about 3 s instead of about 30 s (5 failed checks 3 s apart, after
# a 10 s timeout each): the Train controller learns of the dead workers only then.
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                   "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}


def _say(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(gcs_port: int, dashboard_port: int, agent_port: int, env: dict[str, dict[str, str]]) -> None:
    worker_node = {**NODE, "env_vars": env.get("worker") or None}
    cluster = Cluster(initialize_head=True, head_node_args={
        **NODE, "env_vars": env.get("head") or None, "gcs_server_port": gcs_port, "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": dashboard_port, "dashboard_agent_listen_port": agent_port,
        "_system_config": FAST_NODE_DEATH})
    try:
        worker = cluster.add_node(**worker_node)
        _say({"address": cluster.address, "head": cluster.head_node.node_id, "worker": worker.node_id})
        for line in sys.stdin:
            command = line.strip()
            if command == "kill":
                cluster.remove_node(worker, allow_graceful=False)
                killed, worker = worker.node_id, cluster.add_node(**worker_node)
                _say({"killed": killed, "added": worker.node_id})
            elif command == "workers":
                actors = sorted(cluster.global_state.actor_table(None).values(), key=lambda a: a["StartTime"])
                _say([{"node": a["Address"]["NodeID"], "state": a["State"]} for a in actors
                      if a["ActorClassName"] == "RayTrainWorker"])
            elif command == "stop":
                break
            else:
                _say({"error": f"unknown command {command!r}"})
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]), json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
