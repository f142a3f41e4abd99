"""A training stage's session, the one way through a stage for every path: the in-process run
(``ray.num_workers: 0``, :func:`train_in_process`), each Ray Train worker and the Tune trials (which run either).

* :func:`prepare_run`, where a run starts (this process, or the Ray driver): the inputs checked, the stage's
  data opened once (:class:`~videoiq.train.stage_data.StageData`), the run folder's lineage checked, and
  a finished run found before anything is built;
* :func:`run_session`: build the stage, restore the newest checkpoint, then per epoch the record in
  ``metrics.jsonl``, the checkpoint, the epoch line and wandb, and the run's one epoch hook, with the same
  messages wherever it runs; where the checkpoint goes is a :class:`CheckpointStore` (a file here, Ray
  Train's reported checkpoints on Ray);
* :func:`run_epochs`: the epoch loop itself.

A run folder holds the checkpoint, ``metrics.jsonl`` and the wandb run; running the same config into the same
folder resumes after the last finished epoch (when its inputs have not changed: ``lineage.check_run``).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..config import StageConfig
from ..data.clips import ClipSpec, VideoClipDataset, eval_loader
from ..tracking import resolve_mode
from .checkpoint import FILENAME, check_storage, load_checkpoint, save_checkpoint
from .lineage import check_run
from .logbook import StageLog, start_tracker
from .loop import NonFiniteLoss, recalibrate_batch_norm, train_one_epoch
from .scoring import Evaluation
from .stage_data import StageData
from .stages import Stage, build_stage
from .tasks import PolicyTask


def run_epochs(stage: Stage, module: nn.Module, train_batches: Callable[[int], Iterable[dict[str, Tensor]]],
               val_batches: Callable[[], Iterable[dict[str, Tensor]]], device: torch.device, start_epoch: int,
               on_epoch_end: Callable[[int, dict[str, float], Evaluation | None], None],
               on_log: Callable[[dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train from ``start_epoch`` to ``optim.epochs``; after each epoch call ``on_epoch_end`` (which saves the
    checkpoint and logs) with the validation's result, which is ``None`` on epochs that ``optim.val_every``
    passes over; ``on_log`` gets a progress record every ``logging.log_every``
    steps. After the last epoch, ``optim.bn_recalibration`` batches recompute the BN statistics first.
    Returns the last epoch's metrics."""
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, stage.cfg.optim.epochs):
        stage.task.on_epoch_start(epoch)
        metrics = {"epoch": float(epoch + 1), "lr": stage.optimizer.param_groups[0]["lr"]}
        if isinstance(stage.task, PolicyTask):
            metrics["temperature"] = float(stage.task.model.policy.temperature)
        try:
            metrics.update(train_one_epoch(stage.task, module, train_batches(epoch), stage.optimizer, device,
                                           epoch=epoch, log_every=stage.cfg.logging.log_every, on_log=on_log,
                                           amp=stage.cfg.speed.amp))
        except NonFiniteLoss as e:
            last = stage.last_saved or "none: no epoch has finished yet"
            raise NonFiniteLoss(f"{stage.cfg.STAGE}: {e}. Stopped before that step changed any weight; the last good "
                                f"checkpoint is {last}, left as it was") from None
        stage.global_step += int(metrics["train/steps"])
        stage.scheduler.step()
        if epoch + 1 == stage.cfg.optim.epochs and stage.cfg.optim.bn_recalibration:
            metrics["train/bn_recalibration_batches"] = float(recalibrate_batch_norm(
                stage.task, train_batches(epoch + 1), stage.cfg.optim.bn_recalibration, device, stage.cfg.speed.amp))
        evaluation = None
        if (epoch + 1) % stage.cfg.optim.val_every == 0 or epoch + 1 == stage.cfg.optim.epochs:
            stage.task.train(False)
            evaluation = stage.evaluate(val_batches(), device)
            metrics.update(evaluation.metrics)
        on_epoch_end(epoch + 1, metrics, evaluation)
    return metrics


class CheckpointStore(Protocol):
    """Where a session's checkpoints go and come back from."""

    copies: int  # how many checkpoints can exist at once (the storage check asks room for them)
    where: str  # for messages: where the newest one is

    def latest(self, stage: str) -> tuple[dict[str, Any], str] | None:
        """The newest checkpoint of ``stage`` (content, its file), or None."""

    def save(self, epoch: int, payload: dict[str, Any] | None, metrics: dict[str, float]) -> None:
        """Keep the checkpoint after ``epoch`` (``payload`` is None on ranks other than 0)."""


class FileCheckpoint:
    """An in-process run's ``checkpoint.pt``, replaced atomically after each epoch (the old one stays until
    the new one is whole, hence room for two)."""

    copies = 2

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / FILENAME
        self.where = str(self.path)

    def latest(self, stage: str) -> tuple[dict[str, Any], str] | None:
        if not self.path.exists():
            return None
        return load_checkpoint(self.path, stages=(stage,), what="resume"), str(self.path)

    def save(self, epoch: int, payload: dict[str, Any] | None, metrics: dict[str, float]) -> None:
        if payload is not None:
            save_checkpoint(self.path, payload)


class Prepared(NamedTuple):
    """What :func:`prepare_run` found: the stage's data, its lineage, and the run's result if it is finished."""

    data: StageData
    lineage: dict[str, Any]
    finished: dict[str, Any] | None  # {"checkpoint": path, "metrics": {...}} of a run with all its epochs


def prepare_run(cfg: StageConfig, run_dir: Path, printer: Callable[[str], None] = print) -> Prepared:
    """Before a stage's run starts anywhere: check its inputs, open its data, check the run folder's lineage
    (``run.changed_inputs``), and say so if the run already has all its epochs."""
    cfg.check_inputs()
    data = StageData.open(cfg)
    lineage, found = check_run(cfg, run_dir, data, printer)
    finished = None
    if found is not None and found[1]["epoch"] >= cfg.optim.epochs:
        printer(f"{cfg.STAGE}: {found[0]} already has all {found[1]['epoch']} epochs; nothing to do")
        finished = {"checkpoint": str(found[0]), "metrics": dict(found[1]["metrics"])}
    return Prepared(data, lineage, finished)


class Readers(NamedTuple):
    """A session's batches: the training batches of an epoch, and the validation batches."""

    train: Callable[[int], Iterable[dict[str, Tensor]]]
    val: Callable[[], Iterable[dict[str, Tensor]]]


def run_session(cfg: StageConfig, prepared: Prepared, run_dir: Path, device: torch.device, store: CheckpointStore,
                readers: Readers, printer: Callable[[str], None], wandb_mode: str, *, main: bool = True,
                wrap: Callable[[nn.Module], nn.Module] = lambda module: module,
                on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train ``cfg``'s stage into ``run_dir`` from its newest checkpoint in ``store``; returns the last metrics.

    ``main``: this process is rank 0, which prints, writes ``metrics.jsonl`` and logs to wandb; ``wrap``
    turns the task's module into what trains (DDP, ``torch.compile``); ``on_epoch(epoch, metrics)`` is
    called after each epoch's checkpoint is kept."""
    torch.manual_seed(cfg.seed)
    stage = build_stage(cfg, prepared.data, device)
    stage.lineage = prepared.lineage
    module = wrap(stage.task.module)
    if cfg.speed.compile:
        module = torch.compile(module)
    start, last = 0, {}
    found = store.latest(cfg.STAGE)
    if found is not None:
        ckpt, source = found
        start, last = stage.restore(ckpt, source), dict(ckpt["metrics"])
        stage.last_saved = f"{store.where} (after epoch {start})"
    if start >= cfg.optim.epochs:  # finished since prepare_run looked (a Ray Train restart)
        return last
    logbook = None
    if main:
        check_storage(run_dir, store.copies * stage.checkpoint_bytes())
        logbook = StageLog(stage, run_dir, printer, start_tracker(cfg, run_dir, wandb_mode))
        logbook.resume(start)
        if start:
            printer(f"{cfg.STAGE}: resuming {run_dir} after epoch {start}")

    def on_epoch_end(epoch: int, metrics: dict[str, float], evaluation: Evaluation | None) -> None:
        if logbook is not None:
            logbook.record(metrics)
        store.save(epoch, stage.payload(epoch, metrics) if main else None, metrics)
        stage.last_saved = f"{store.where} (after epoch {epoch})"
        if logbook is not None:
            logbook.publish(epoch, metrics, evaluation)
            if on_epoch is not None:
                on_epoch(epoch, metrics)

    with logbook.tracker if logbook is not None else contextlib.nullcontext():
        return run_epochs(stage, module, readers.train, readers.val, device, start, on_epoch_end,
                          logbook.step if logbook is not None else None) or last


def train_in_process(cfg: StageConfig, out_dir: str | os.PathLike, device: str = "cpu",
                     printer: Callable[[str], None] = print,
                     on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Run a training stage in this process (no Ray) into ``out_dir``, its readers ``DataLoader``s; resumes
    from its checkpoint there. ``on_epoch(epoch, metrics)`` is called after each epoch's checkpoint is written."""
    out = Path(out_dir)
    prepared = prepare_run(cfg, out, printer)
    if prepared.finished is not None:
        return prepared.finished["metrics"]
    train_ds = VideoClipDataset(prepared.data.train, ClipSpec.from_config(cfg.data, train=True), cfg.seed)
    val_ds = VideoClipDataset(prepared.data.val, ClipSpec.from_config(cfg.data, train=False))
    workers = cfg.data.num_workers

    def train_batches(epoch: int) -> DataLoader:
        train_ds.set_epoch(epoch)
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        # every video once an epoch, the last batch partial: what a Ray Train worker's shard gives too
        return DataLoader(train_ds, batch_size=cfg.data.batch_size, shuffle=True, generator=g, num_workers=workers)

    return run_session(cfg, prepared, out, torch.device(device), FileCheckpoint(out),
                       Readers(train_batches, lambda: eval_loader(val_ds, cfg.data.batch_size, workers)), printer,
                       resolve_mode(cfg.logging.wandb), on_epoch=on_epoch)
