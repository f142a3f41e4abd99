"""``videoiq data build --shards N --ray``: each shard of a sharded split is one Ray task on the cluster.

The tasks run :func:`videoiq.data.shard_build.build_shard` (one CPU each, spread over the nodes); the
driver only collects their reports. A task lost with its node is retried by Ray (``max_retries``) and
leaves at most a temporary folder that the next build removes; the re-run of a failed build keeps every
shard that was renamed into place. A user error in a task (``--strict`` meeting a bad input) is raised
here as itself, and the tasks still running are cancelled.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import ray
from ray.exceptions import RayTaskError

from ..data.shard_build import ShardJob, ShardResult, ShardRunner, build_shard
from ..errors import user_cause
from .train import connect

RETRIES = 3  # attempts after the first when a task's worker or node dies


def ray_runner(printer: Callable[[str], None] = print) -> ShardRunner:
    """A shard runner that submits every job as a Ray task of the cluster of ``RAY_ADDRESS`` (else a local Ray)."""

    def run(jobs: list[ShardJob]) -> Iterator[ShardResult]:
        if not jobs:
            return
        connect(printer=printer)
        # SPREAD: decoding is the work, so every node takes a share (Ray's default packs the first nodes)
        task = ray.remote(num_cpus=1, max_retries=RETRIES, scheduling_strategy="SPREAD")(build_shard)
        pending = {task.remote(job): job for job in jobs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    pending.pop(ref)
                    try:
                        yield ray.get(ref)
                    except RayTaskError as e:
                        cause = user_cause(e)
                        if cause is not None:
                            raise cause from None
                        raise
        finally:
            for ref in pending:
                ray.cancel(ref)

    return run
