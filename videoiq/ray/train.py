"""A stage on Ray Train: the per-worker function and the driver that builds the ``TorchTrainer``.

The driver prepares the run as the in-process path does (:func:`~videoiq.train.session.prepare_run`: inputs,
data opened once, lineage, a finished run found), so a damaged database or a finished run stops there, before
Ray starts. Each worker runs the same session (:func:`~videoiq.train.session.run_session`) with its task
module in DDP (gloo on CPU, nccl on GPU) and Ray Train's reported checkpoints. Training clips come from this
worker's Ray Data shard; validation reads the LMDB directly, each rank a disjoint slice with nothing dropped,
and predictions are gathered so every rank reports the same numbers. The run directory
``<run.storage_path>/<name>`` gets the ``checkpoint_*`` folders, ``metrics.jsonl``, rank 0's wandb run,
``reads/`` (the nodes the Ray Data read tasks ran on) and ``relay/`` (what the workers said, which the driver
prints: :mod:`.relay`). Re-running with the same name resumes from the latest checkpoint (Train V2).

What a worker raises reaches the driver as the worker's own error, its traceback kept under ``<run>/errors/``:
a user error (a garbled record, a checkpoint of other classes) as :class:`~videoiq.errors.RemoteError`, a bug
as :class:`~videoiq.errors.RemoteBug`; a failure of Ray's own is one :class:`RayRunError` line.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable

import ray
import ray.train
import ray.train.torch
from ray.exceptions import RayActorError
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    ControllerError,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)
from ray.train.torch import TorchTrainer

from ..config import ConfigError, StageConfig, absolute_paths, config_from_dict, config_to_dict
from ..data.clips import ClipSpec, VideoClipDataset, eval_loader
from ..distributed import is_main, rank, world_size
from ..errors import RemoteBug, RemoteError, VideoiqError, find_remote, keep_traceback, user_cause
from ..logs import configure_logging
from ..tracking import resolve_mode, wandb_env
from ..train.checkpoint import FILENAME, check_storage, load_checkpoint, save_checkpoint
from ..train.session import Prepared, Readers, prepare_run, run_session
from ._placement_groups import GroupJanitor, existing_groups, remove_abandoned_groups
from .data import clip_dataset, iter_clip_batches, train_data_config
from .relay import RELAY_FOLDER, Follower, Relay, run_following


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, float]:
    """What each Ray Train worker runs; returns the last epoch's metrics (``Result.return_value``).

    What fails reaches the driver as the worker's own error, its traceback kept under ``<run>/errors/``: a
    user error as :class:`~videoiq.errors.RemoteError`, anything else as :class:`~videoiq.errors.RemoteBug`."""
    try:
        return _train_worker(config)
    except Exception as e:
        cause = user_cause(e)
        log = keep_traceback(config["run_dir"], f"rank{ray.train.get_context().get_world_rank()}", e)
        if cause is None:
            raise RemoteBug(f"{type(e).__name__}: {e}", log, "".join(traceback.format_exception(e))) from None
        raise RemoteError(str(cause), log) from None


class SizedBatches:
    """A shard's batches with about how many there are (the progress line's time left; Ray Data does not say)."""

    def __init__(self, batches: Iterable[dict[str, Any]], count: int) -> None:
        self.batches, self.count = batches, count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return self.count


class ReportedCheckpoints:
    """Ray Train's checkpoints: each epoch's is reported from a temporary folder (rank 0's; the other ranks
    report the metrics alone, as many times); Ray keeps ``ray.num_to_keep`` and writes the next beside them."""

    def __init__(self, run_dir: Path, num_to_keep: int) -> None:
        self.copies, self.where = num_to_keep + 1, f"the newest checkpoint_* in {run_dir}"

    def latest(self, stage: str) -> tuple[dict[str, Any], str] | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            ckpt = load_checkpoint(Path(d) / FILENAME, stages=(stage,), what="resume")
        return ckpt, str(Path(checkpoint.path) / FILENAME)

    def save(self, epoch: int, payload: dict[str, Any] | None, metrics: dict[str, float]) -> None:
        if payload is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / FILENAME, payload)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))


def _train_worker(config: dict[str, Any]) -> dict[str, float]:
    cfg = config_from_dict(config["stage"], warn_renamed=False)
    run_dir = Path(config["run_dir"])
    relay = Relay(run_dir / RELAY_FOLDER / f"rank{rank()}.jsonl")
    configure_logging(rank(), handler=relay.handler())
    prepared: Prepared = config["prepared"]
    batch = max(1, cfg.data.batch_size // world_size())
    shard = ray.train.get_dataset_shard("train")
    val = VideoClipDataset(prepared.data.val, ClipSpec.from_config(cfg.data, train=False))
    val.positions = val.positions[rank()::world_size()]
    steps = math.ceil(len(prepared.data.train) / world_size() / batch)
    readers = Readers(lambda epoch: SizedBatches(iter_clip_batches(shard, batch), steps),
                      lambda: eval_loader(val, batch, cfg.data.num_workers))
    return run_session(cfg, prepared, run_dir, ray.train.torch.get_device(),
                       ReportedCheckpoints(run_dir, cfg.ray.num_to_keep), readers, relay.say, config["wandb_mode"],
                       main=is_main(), wrap=ray.train.torch.prepare_model, on_epoch=relay.epoch)


RAY_LOGS = "/tmp/ray/session_latest/logs"  # where Ray keeps its processes' output (its default)


def connect(min_cpus: float = 0.0, printer: Callable[[str], None] = print) -> None:
    """Join the cluster of ``RAY_ADDRESS`` (``ray job submit`` sets it; ``auto`` finds a running one),
    else start a local Ray (never a stale address left by a dead cluster: that would hang) with at least
    ``min_cpus`` logical CPUs, so that a config written for a larger machine still runs here, only slower.

    Either way the output of Ray's processes stays in Ray's logs (``log_to_driver=False``): what videoiq's
    workers say comes through their relay files (:mod:`.relay`)."""
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
        return
    cores = os.cpu_count() or 1
    cpus = max(cores, math.ceil(min_cpus))
    # A local Ray with token auth on (Ray's default) writes ~/.ray/auth_token, which then switches auth on
    # for every later `ray start` of this user; a cluster videoiq starts for itself needs none.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # While a run trains, Ray Train's placement-group cleaner asks the dashboard whether the run's controller
    # is alive. It finds the dashboard through RAY_API_SERVER_ADDRESS, else through whatever cluster
    # /tmp/ray/ray_current_cluster names (the latest `ray start` on the machine): asking another cluster, it
    # hears "no such controller" and removes the live run's workers; finding none, each run's shutdown waits
    # 12 s for the query. So this cluster's dashboard gets a free port, and every process of it (the raylet
    # passes its environment on) is told that port.
    dashboard = _free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
    ray.init(address="local", num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=dashboard, **quiet)
    printer(f"started a local Ray with {cpus} logical CPUs" + (f" on this machine's {cores} cores" if cpus > cores
            else "") + f" (dashboard http://127.0.0.1:{dashboard}; Ray's own logs: {RAY_LOGS})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_resources(cfg: StageConfig) -> None:
    """Refuse, before anything waits, a worker group the cluster can never schedule: more CPUs or GPUs than
    it has, one that takes every CPU (the Ray Data readers feeding the workers then never run), or more
    workers than nodes for STRICT_SPREAD."""
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    need = cfg.ray.num_workers * cfg.ray.cpus_per_worker
    ask = f"ray.num_workers={cfg.ray.num_workers} x ray.cpus_per_worker={cfg.ray.cpus_per_worker:g} = {need:g} CPUs"
    if need > cpus:
        raise ConfigError(f"{ask}, but the Ray cluster has {cpus:g}; use fewer workers or CPUs per worker")
    if need > cpus - 1:
        raise ConfigError(f"{ask} of the cluster's {cpus:g} leaves none for the Ray Data readers that feed the "
                          "workers, so training would wait forever; leave at least one CPU free (fewer workers or "
                          "CPUs per worker, or more logical CPUs: `ray start --num-cpus N`)")
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    if cfg.ray.placement_strategy == "STRICT_SPREAD" and cfg.ray.num_workers > nodes:
        raise ConfigError(f"ray.placement_strategy=STRICT_SPREAD puts each of ray.num_workers={cfg.ray.num_workers} "
                          f"on its own node, but the Ray cluster has {nodes}; use SPREAD or fewer workers")
    if cfg.run.use_gpu and cfg.ray.num_workers > gpus:
        raise ConfigError(f"run.use_gpu with ray.num_workers={cfg.ray.num_workers}, "
                          f"but the Ray cluster has {gpus:g} GPUs")


def train_on_ray(cfg: StageConfig, run_dir: Path, printer: Callable[[str], None] = print,
                 on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> tuple[str, dict[str, float]]:
    """Train a stage with ``cfg.ray.num_workers`` Ray Train workers into ``run_dir`` (Ray's run folder:
    its name is the run's); returns (checkpoint file, final metrics). Call it through
    :func:`videoiq.dispatch.run_config`, which names the run folder.

    Connects to the cluster of ``RAY_ADDRESS`` (as ``ray job submit`` sets it) or starts a local one. What the
    workers say comes back through their relay files (:mod:`.relay`) to ``printer``, and each epoch whose
    checkpoint is kept to ``on_epoch``, both in this process and thread.
    """
    if cfg.ray.num_workers < 1:
        raise ConfigError("ray.num_workers: 0 means in-process; use videoiq.train.session.train_in_process")
    cfg = config_from_dict(absolute_paths(config_to_dict(cfg)), warn_renamed=False)  # workers' cwd is not ours
    prepared = prepare_run(cfg, run_dir, printer)  # a damaged database stops here, before Ray starts
    if prepared.finished is not None:
        return prepared.finished["checkpoint"], prepared.finished["metrics"]
    connect(cfg.ray.num_workers * cfg.ray.cpus_per_worker + 1, printer)
    check_resources(cfg)
    storage, name = str(run_dir.parent), run_dir.name
    check_storage(storage)  # writable at all; rank 0 checks the space once it knows the models' size
    spec = ClipSpec.from_config(cfg.data, train=True)
    mode = resolve_mode(cfg.logging.wandb)  # here, where the user's environment is; workers may not have it

    def trainer() -> TorchTrainer:
        datasets = {"train": clip_dataset(prepared.data.train, spec, seed=cfg.seed, read_log=str(run_dir / "reads"))}
        return TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"stage": config_to_dict(cfg), "run_dir": str(run_dir), "wandb_mode": mode,
                               "prepared": prepared},
            scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.run.use_gpu,
                                         resources_per_worker={"CPU": cfg.ray.cpus_per_worker},
                                         placement_strategy=cfg.ray.placement_strategy),
            run_config=RunConfig(name=name, storage_path=storage,
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.num_to_keep),
                                 failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
                                 worker_runtime_env={"env_vars": wandb_env()} if mode == "online" else None),
            datasets=datasets, dataset_config=train_data_config(datasets),
        )

    printer(f"{cfg.STAGE}: {cfg.ray.num_workers} Ray Train workers, run {run_dir}")
    follower = Follower(run_dir / RELAY_FOLDER, "rank*.jsonl")
    result = run_following(lambda: _fit(trainer, cfg, run_dir, printer), follower, printer, on_epoch)
    if result.checkpoint is None:
        raise RuntimeError(f"{cfg.STAGE}: the run finished without a checkpoint")
    return os.path.join(result.checkpoint.path, FILENAME), dict(result.return_value or result.metrics or {})


def _fit(trainer: Callable[[], TorchTrainer], cfg: StageConfig, run_dir: Path,
         printer: Callable[[str], None]) -> Any:
    """``trainer().fit()``, restarted when a worker dies while Ray Train manages the group; a failure comes out as
    the worker's own error (:func:`~videoiq.errors.find_remote`) or, when Ray itself failed, as one
    :class:`RayRunError` whose traceback is kept under ``<run>/errors/``."""
    retries = 0
    before = existing_groups()  # groups from before this run: never this run's to free
    while True:
        janitor = GroupJanitor(before, cfg, printer)
        janitor.start()
        try:
            result = trainer().fit()
            break
        except TrainingFailedError as e:
            remote = find_remote(e)
            if remote is not None:  # the worker's own error, not Ray's wrapping of it
                raise remote from None
            # Ray Train restarts a worker group that dies while training (ray.max_failures), but one that dies
            # while the controller is starting, polling or stopping it fails the whole run; the same run name
            # resumes from the last checkpoint, so do that, within the same budget.
            if (not isinstance(e, ControllerError) or not isinstance(e.controller_failure, RayActorError)
                    or retries >= cfg.ray.max_failures):
                raise RayRunError(cfg.STAGE, keep_traceback(run_dir, "ray", e), e) from None
            retries += 1
            freed = remove_abandoned_groups(before, cfg)
            printer(f"{cfg.STAGE}: a Train worker died while Ray Train was managing the group; restarting from the "
                    f"last checkpoint (retry {retries} of ray.max_failures={cfg.ray.max_failures})"
                    + (f"; freed {freed} abandoned worker placement group(s)" if freed else ""))
        finally:
            janitor.stop.set()
            janitor.join()
    if result.error is not None:
        remote = find_remote(result.error)
        if remote is not None:
            raise remote
        raise RayRunError(cfg.STAGE, keep_traceback(run_dir, "ray", result.error), result.error)
    return result


class RayRunError(VideoiqError):
    """Ray failed the run for a reason of its own (a node lost past ``ray.max_failures``, a cluster that went
    away): its first line, with Ray's traceback kept in a file."""

    def __init__(self, stage: str, log: str, error: BaseException) -> None:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        super().__init__(f"{stage}: the Ray run failed: {first} (Ray's traceback: {log})")
