"""A stage on Ray Train: the per-worker function and the driver that builds the ``TorchTrainer``.

Each worker builds the same :class:`~videoiq.train.stages.Stage` as the
in-process path, wraps its task module in DDP (gloo on CPU, nccl on GPU) and runs
:func:`~videoiq.train.run.run_epochs`. Training clips come from this worker's Ray Data shard;
validation reads the LMDB directly, each rank a disjoint slice with nothing dropped, and predictions
are gathered so every rank reports the same numbers. Rank 0 writes the checkpoint (the same
``checkpoint.pt`` format) and reports it; the run directory ``<ray.storage_path>/<name>`` also gets a
``metrics.jsonl``, rank 0's wandb run and ``reads/``, the nodes the Ray Data read tasks ran on.
Re-running with the same name resumes from the latest checkpoint (Train V2). A user error in a worker
(a garbled record, a checkpoint of other classes) is kept with its traceback under ``<run>/errors/``
and reaches the driver as that error's own message (:class:`~videoiq.errors.RemoteError`), not as
Ray's wrapper around it.
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable

import ray
import ray.train
import ray.train.torch
import torch
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
from ..data.records import VideoDB
from ..distributed import is_main, rank, world_size
from ..errors import RemoteError, find_remote, keep_traceback, user_cause
from ..logs import configure_logging, quiet_ray_train_reports
from ..tracking import resolve_mode, wandb_env
from ..train.checkpoint import FILENAME, check_storage, load_checkpoint, save_checkpoint
from ..train.lineage import check_run
from ..train.logbook import StageLog, start_tracker
from ..train.run import run_epochs
from ..train.scoring import Evaluation
from ..train.stages import build_stage
from ._placement_groups import GroupJanitor, existing_groups, remove_abandoned_groups
from .data import clip_dataset, iter_clip_batches, train_data_config


def _say(line: str) -> None:
    """A progress line to the worker's stdout, which Ray forwards to the driver and the job's log.

    Not ``print``: Ray Train patches it to also log each line, so every line would appear twice.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, float]:
    """What each Ray Train worker runs; returns the last epoch's metrics (``Result.return_value``)."""
    try:
        return _train_worker(config)
    except Exception as e:
        cause = user_cause(e)
        if cause is None:
            raise  # a bug: Ray's report of it, traceback and all
        log = keep_traceback(config["run_dir"], f"rank{ray.train.get_context().get_world_rank()}", e)
        raise RemoteError(str(cause), log) from None


class SizedBatches:
    """A shard's batches with about how many there are (the progress line's time left; Ray Data does not say)."""

    def __init__(self, batches: Iterable[dict[str, Any]], count: int) -> None:
        self.batches, self.count = batches, count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return self.count


def _train_worker(config: dict[str, Any]) -> dict[str, float]:
    cfg = config_from_dict(config["stage"])
    configure_logging(ray.train.get_context().get_world_rank())
    quiet_ray_train_reports()
    run_dir = Path(config["run_dir"])
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    stage = build_stage(cfg, device)
    stage.lineage = config["lineage"]
    module = ray.train.torch.prepare_model(stage.task.module)
    if cfg.speed.compile:
        module = torch.compile(module)
    start, last = 0, {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            ckpt = load_checkpoint(Path(d) / FILENAME, stages=(cfg.STAGE,), what="resume")
        start, last = stage.restore(ckpt, str(Path(checkpoint.path) / FILENAME)), dict(ckpt["metrics"])
        stage.last_saved = f"the newest checkpoint_* in {run_dir} (after epoch {start})"
    logbook = None
    if is_main():  # only rank 0 prints, writes metrics.jsonl and logs to wandb
        # Ray keeps num_to_keep checkpoints and writes the next one beside them
        check_storage(run_dir, (cfg.ray.num_to_keep + 1) * stage.checkpoint_bytes())
        logbook = StageLog(stage, run_dir, _say, start_tracker(cfg, run_dir, config["wandb_mode"]))
        logbook.resume(start)
        if start:
            _say(f"{cfg.STAGE}: resuming from the checkpoint after epoch {start}")
    batch = max(1, cfg.data.batch_size // world_size())
    shard = ray.train.get_dataset_shard("train")
    val = VideoClipDataset(cfg.data.lmdb_path(cfg.data.val_split), ClipSpec.from_config(cfg.data, train=False))
    val.positions = val.positions[rank()::world_size()]

    steps = math.ceil(len(VideoDB(cfg.data.lmdb_path(cfg.data.train_split)).index.keys) / world_size() / batch)

    def train_batches(epoch: int):
        return SizedBatches(iter_clip_batches(shard, batch), steps)

    def val_batches():
        return eval_loader(val, batch, cfg.data.num_workers)

    def on_epoch_end(epoch: int, metrics: dict[str, float], evaluation: Evaluation | None) -> None:
        if logbook is None:
            ray.train.report(metrics)  # every rank reports the same number of times
            return
        logbook.record(metrics)
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / FILENAME, stage.payload(epoch, metrics))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
        stage.last_saved = f"the newest checkpoint_* in {run_dir} (after epoch {epoch})"
        logbook.publish(epoch, metrics, evaluation)

    with logbook.tracker if logbook else contextlib.nullcontext():
        metrics = run_epochs(stage, module, train_batches, val_batches, device, start, on_epoch_end,
                             logbook.step if logbook else None)
    return metrics or last


def connect(min_cpus: float = 0.0, printer: Callable[[str], None] = print) -> None:
    """Join the cluster of ``RAY_ADDRESS`` (``ray job submit`` sets it; ``auto`` finds a running one),
    else start a local Ray (never a stale address left by a dead cluster: that would hang) with at least
    ``min_cpus`` logical CPUs, so that a config written for a larger machine still runs here, only slower."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    cores = os.cpu_count() or 1
    cpus = max(cores, math.ceil(min_cpus))
    if cpus > cores:
        printer(f"starting a local Ray with {cpus} logical CPUs on this machine's {cores} cores (the workers' CPUs "
                "and one for the Ray Data readers)")
    # While a run trains, Ray Train's placement-group cleaner asks the dashboard whether the run's controller
    # is alive. It finds the dashboard through RAY_API_SERVER_ADDRESS, else through whatever cluster
    # /tmp/ray/ray_current_cluster names (the latest `ray start` on the machine): asking another cluster, it
    # hears "no such controller" and removes the live run's workers; finding none, each run's shutdown waits
    # 12 s for the query. So this cluster's dashboard gets a free port, and every process of it (the raylet
    # passes its environment on) is told that port.
    dashboard = _free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
    ray.init(address="local", num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=dashboard)


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
    if cfg.ray.use_gpu and cfg.ray.num_workers > gpus:
        raise ConfigError(f"ray.use_gpu with ray.num_workers={cfg.ray.num_workers}, "
                          f"but the Ray cluster has {gpus:g} GPUs")


def train_on_ray(cfg: StageConfig, run_dir: Path, printer: Callable[[str], None] = print,
                 callbacks: list[Any] | None = None) -> tuple[str, dict[str, float]]:
    """Train a stage with ``cfg.ray.num_workers`` Ray Train workers into ``run_dir`` (Ray's run folder:
    its name is the run's); returns (checkpoint file, final metrics). Call it through
    :func:`videoiq.runner.run_config`, which checks the inputs and names the run folder.

    Connects to the cluster of ``RAY_ADDRESS`` (as ``ray job submit`` sets it) or starts a local one.
    ``callbacks`` go to the run (a Tune trial passes the one that forwards reports to Tune).
    """
    if cfg.ray.num_workers < 1:
        raise ConfigError("ray.num_workers: 0 means in-process; use videoiq.train.run.train_in_process")
    cfg = config_from_dict(absolute_paths(config_to_dict(cfg)))  # the workers' working directory is not ours
    connect(cfg.ray.num_workers * cfg.ray.cpus_per_worker + 1, printer)
    check_resources(cfg)
    storage, name = str(run_dir.parent), run_dir.name
    check_storage(storage)  # writable at all; rank 0 checks the space once it knows the models' size
    lineage, finished = check_run(cfg, run_dir, printer)
    if finished is not None and finished[1]["epoch"] >= cfg.optim.epochs:
        printer(f"{cfg.STAGE}: {finished[0]} already has all {finished[1]['epoch']} epochs; nothing to do")
        return str(finished[0]), dict(finished[1]["metrics"])
    spec = ClipSpec.from_config(cfg.data, train=True)
    mode = resolve_mode(cfg.logging.wandb)  # here, where the user's environment is; workers may not have it

    def trainer() -> TorchTrainer:
        datasets = {"train": clip_dataset(cfg.data.lmdb_path(cfg.data.train_split), spec, seed=cfg.seed,
                                          read_log=str(run_dir / "reads"))}
        return TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"stage": config_to_dict(cfg), "run_dir": str(run_dir), "wandb_mode": mode,
                               "lineage": lineage},
            scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                         resources_per_worker={"CPU": cfg.ray.cpus_per_worker},
                                         placement_strategy=cfg.ray.placement_strategy),
            run_config=RunConfig(name=name, storage_path=storage, callbacks=callbacks,
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.num_to_keep),
                                 failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
                                 worker_runtime_env={"env_vars": wandb_env()} if mode == "online" else None),
            datasets=datasets, dataset_config=train_data_config(datasets),
        )

    printer(f"{cfg.STAGE}: {cfg.ray.num_workers} Ray Train workers, run {run_dir}")
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
            if remote is not None:  # the worker's own message, not Ray's wrapping of it
                raise RemoteError(remote.message, remote.log) from None
            if not isinstance(e, ControllerError):
                raise
            # Ray Train restarts a worker group that dies while training (ray.max_failures), but one that dies
            # while the controller is starting, polling or stopping it fails the whole run; the same run name
            # resumes from the last checkpoint, so do that, within the same budget.
            if not isinstance(e.controller_failure, RayActorError) or retries >= cfg.ray.max_failures:
                raise
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
        raise result.error if remote is None else RemoteError(remote.message, remote.log)
    if result.checkpoint is None:
        raise RuntimeError(f"{cfg.STAGE}: the run finished without a checkpoint")
    return os.path.join(result.checkpoint.path, FILENAME), dict(result.return_value or result.metrics or {})
