"""Private, provisional: frees the worker placement groups Ray Train 2.60 leaves reserved after it restarts a
worker group (delete this module once a Ray release frees them itself).

Seen with Ray 2.60 on one node: when a Train worker dies and Ray Train starts a new group, the dead group's
placement group can stay reserved. Train V2 hands its clean-up to the detached ``PlacementGroupCleaner``
actor, which removes a group only once the controller is gone (ray-project/ray#58515) and reads the state
API to do so; while the controller lives the abandoned group keeps its CPUs, and once the new group holds
the rest, the Ray Data readers feeding the workers never run and training waits forever. The related
report of resources not released between runs is ray-project/ray#54305. Removing the groups here relies on
Ray's internal resource names (``CPU_group_<id>``), another reason to keep it in its own module.
"""
from __future__ import annotations

import threading
from typing import Callable

import ray
from ray.util.placement_group import PlacementGroup, PlacementGroupID, placement_group_table, remove_placement_group

from ..config import StageConfig


def existing_groups() -> set[str]:
    """The ids of every placement group the cluster has now (a run never frees one of these)."""
    return set(placement_group_table())


def idle_groups(before: set[str], cfg: StageConfig) -> tuple[list[str], bool]:
    """This run's worker placement groups with nothing running in them, and whether one is in use.

    Only groups this job created since ``before`` (when the run started), shaped like this run's
    worker group, count.
    """
    job = ray.get_runtime_context().get_job_id()
    shape = [{"CPU": float(cfg.ray.cpus_per_worker), **({"GPU": 1.0} if cfg.run.use_gpu else {})}] * cfg.ray.num_workers
    total, free = ray.cluster_resources(), ray.available_resources()
    idle, busy = [], False
    for pg_id, info in placement_group_table().items():
        if pg_id in before or not pg_id.endswith(job) or info.get("state") != "CREATED":
            continue
        if list(info.get("bundles", {}).values()) == shape:
            cpus = f"CPU_group_{pg_id}"
            if free.get(cpus, 0.0) == total.get(cpus, -1.0):
                idle.append(pg_id)
            else:
                busy = True
    return idle, busy


def remove_group(pg_id: str) -> None:
    remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))


def remove_abandoned_groups(before: set[str], cfg: StageConfig) -> int:
    """After a failed run: remove the worker placement groups it left reserved; returns how many."""
    idle, _ = idle_groups(before, cfg)
    for pg_id in idle:
        remove_group(pg_id)
    return len(idle)


class GroupJanitor(threading.Thread):
    """While a run trains, frees the worker placement groups Ray Train abandons when it restarts a group.

    A group of this run that has stayed empty for ``patience`` checks while another one of this run is
    busy is such a leftover: workers fill a new group within seconds of its creation.
    """

    def __init__(self, before: set[str], cfg: StageConfig, printer: Callable[[str], None],
                 interval: float = 10.0, patience: int = 3):
        super().__init__(name="videoiq-group-janitor", daemon=True)
        self.before, self.cfg, self.printer, self.interval, self.patience = before, cfg, printer, interval, patience
        self.stop = threading.Event()
        self.idle_checks: dict[str, int] = {}

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                idle, busy = idle_groups(self.before, self.cfg)
            except Exception:  # the run's own errors are reported by fit(); never fail it from here
                continue
            self.idle_checks = {g: self.idle_checks.get(g, 0) + 1 for g in idle} if busy else {}
            for pg_id, checks in list(self.idle_checks.items()):
                if checks >= self.patience:
                    remove_group(pg_id)
                    del self.idle_checks[pg_id]
                    self.printer(f"{self.cfg.STAGE}: freed the CPUs of a worker group Ray Train left behind "
                                 "after a restart")
