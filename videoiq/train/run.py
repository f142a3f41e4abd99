"""Running a training stage: the epoch loop (:func:`run_epochs`, shared with the Ray Train workers) and the
in-process run (:func:`train_in_process`, ``ray.num_workers: 0``) with its ``DataLoader`` readers.

A run folder holds ``checkpoint.pt`` (written atomically after every epoch), ``metrics.jsonl`` and the
wandb run; running the same config into the same folder resumes after the last finished epoch (when its
inputs have not changed: ``lineage.check_run``).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import StageConfig
from ..tracking import resolve_mode
from .checkpoint import check_storage, load_checkpoint, save_checkpoint
from .lineage import check_run
from .logbook import StageLog, start_tracker
from .loop import NonFiniteLoss, recalibrate_batch_norm, train_one_epoch
from .scoring import Evaluation
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


def train_in_process(cfg: StageConfig, out_dir: str | os.PathLike, device: str = "cpu",
              printer: Callable[[str], None] = print,
              on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Run a training stage in this process (no Ray) into ``out_dir``; resumes from its checkpoint there.

    ``on_epoch(epoch, metrics)`` is called after each epoch's checkpoint is written (a Tune trial reports there).
    """
    from torch.utils.data import DataLoader

    from ..data.clips import ClipSpec, VideoClipDataset, eval_loader
    from .checkpoint import FILENAME

    cfg.check_inputs()
    out = Path(out_dir)
    dev = torch.device(device)
    lineage, _ = check_run(cfg, out, printer)  # what goes on is reloaded below, whole and checked for this stage
    torch.manual_seed(cfg.seed)
    stage = build_stage(cfg, dev)
    stage.lineage = lineage
    check_storage(out, 2 * stage.checkpoint_bytes())  # the checkpoint and its next version side by side
    start = 0
    if (out / FILENAME).exists():
        ckpt = load_checkpoint(out / FILENAME, stages=(cfg.STAGE,), what="resume")
        start = stage.restore(ckpt, str(out / FILENAME))
        if start >= cfg.optim.epochs:
            printer(f"{cfg.STAGE}: {out / FILENAME} already has all {start} epochs; nothing to do")
            return dict(ckpt["metrics"])
        printer(f"{cfg.STAGE}: resuming from {out / FILENAME} after epoch {start}")
        stage.last_saved = f"{out / FILENAME} (after epoch {start})"
    train_ds = VideoClipDataset(cfg.data.lmdb_path(cfg.data.train_split), ClipSpec.from_config(cfg.data, train=True),
                                cfg.seed)
    val_ds = VideoClipDataset(cfg.data.lmdb_path(cfg.data.val_split), ClipSpec.from_config(cfg.data, train=False))
    workers = cfg.data.num_workers

    def train_batches(epoch: int):
        train_ds.set_epoch(epoch)
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        # every video once an epoch, the last batch partial: what a Ray Train worker's shard gives too
        return DataLoader(train_ds, batch_size=cfg.data.batch_size, shuffle=True, generator=g, num_workers=workers)

    def val_batches():
        return eval_loader(val_ds, cfg.data.batch_size, workers)

    logbook = StageLog(stage, out, printer, start_tracker(cfg, out, resolve_mode(cfg.logging.wandb)))
    logbook.resume(start)

    def on_epoch_end(epoch: int, metrics: dict[str, float], evaluation: Evaluation | None) -> None:
        logbook.record(metrics)
        save_checkpoint(out / FILENAME, stage.payload(epoch, metrics))
        stage.last_saved = f"{out / FILENAME} (after epoch {epoch})"
        logbook.publish(epoch, metrics, evaluation)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    module = torch.compile(stage.task.module) if cfg.speed.compile else stage.task.module
    with logbook.tracker:
        return run_epochs(stage, module, train_batches, val_batches, dev, start, on_epoch_end, logbook.step)
