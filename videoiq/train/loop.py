"""The one training loop and the evaluation pass, shared by every stage; no Ray, no argparse.

Batches are dicts ``{"video": uint8, "label", "index", "valid"}`` from either reader (the PyTorch
``DataLoader`` or a Ray Data shard). Videos are normalised on the device; samples flagged invalid
(bad records skipped under ``data.on_error: skip``) are dropped and counted.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.transforms import normalize
from ..distributed import all_gather_objects, all_reduce_sum
from ..metrics import APResult, average_precision, multi_hot, softmax, topk_accuracy
from .tasks import Task


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite loss: training stops before the step can touch the weights."""


def _valid(batch: dict[str, Tensor], device: torch.device) -> tuple[Tensor, Tensor, Tensor, int]:
    valid = batch["valid"].bool()
    skipped = int((~valid).sum())
    video, label, index = batch["video"], batch["label"], batch["index"]
    if skipped:
        video, label, index = video[valid], label[valid], index[valid]
    return normalize(video.to(device, non_blocking=True)), label.to(device), index, skipped


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast when ``amp`` is ``bf16`` (``speed.amp``), else nothing."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def train_step(task: Task, module: nn.Module, video: Tensor, label: Tensor, optimizer: torch.optim.Optimizer, *,
               amp: str = "off", where: str = "") -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One optimizer step of a stage: forward and losses (autocast with ``amp``), a NaN/inf check before
    any weight is touched, backward, step. Returns the module's outputs and the losses."""
    with autocast(video.device, amp):
        out = module(video)
        losses = task.losses(out, label)
    if not torch.isfinite(losses["loss"]):
        raise NonFiniteLoss(f"{where}: the loss is {losses['loss'].item()} "
                            f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items() if k != 'loss')})")
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return out, losses


def train_one_epoch(task: Task, module: nn.Module, batches: Iterable[dict[str, Tensor]],
                    optimizer: torch.optim.Optimizer, device: torch.device, *, epoch: int, log_every: int = 20,
                    on_log: Callable[[dict[str, float]], None] | None = None, amp: str = "off") -> dict[str, float]:
    """One pass over ``batches``; ``module`` is ``task.module`` or its DDP wrapper. Returns epoch means.

    Sums stay on the device and are read once at the end (plus at each progress record), so a step
    waits on the device only for the NaN check.
    """
    task.train(True)
    sums: dict[str, Tensor] = {}
    correct = torch.zeros((), dtype=torch.float64, device=device)
    seen = skipped = steps = 0
    total = len(batches) if isinstance(batches, Sized) else None  # for the progress line's time left
    start = time.perf_counter()
    for batch in batches:
        video, label, _, bad = _valid(batch, device)
        skipped += bad
        if len(label) == 0:
            continue
        out, losses = train_step(task, module, video, label, optimizer, amp=amp, where=f"epoch {epoch + 1} step {steps + 1}")
        steps += 1
        seen += len(label)
        correct += (task.logits(out).argmax(dim=-1) == label).sum()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.detach().double() * len(label)
        if on_log is not None and log_every and steps % log_every == 0:
            elapsed = time.perf_counter() - start
            on_log({"epoch": epoch, "step": steps, "loss": float(losses["loss"].detach()),
                    "lr": optimizer.param_groups[0]["lr"], "videos_per_s": seen / elapsed,
                    **({"seconds_left": elapsed / steps * max(total - steps, 0), "steps": total} if total else {})})
    local = torch.tensor([seen, 0.0, skipped], dtype=torch.float64)
    local[1] = correct.cpu()
    totals = all_reduce_sum(torch.cat([local, torch.stack(list(sums.values())).cpu() if sums else local[:0]]))
    n = max(totals[0].item(), 1.0)
    metrics = {f"train/{k.removeprefix('loss/') if k != 'loss' else 'loss'}": totals[3 + i].item() / n
               for i, k in enumerate(sums)}
    metrics.update({"train/top1": 100.0 * totals[1].item() / n, "train/videos": totals[0].item(),
                    "train/skipped_records": totals[2].item(), "train/seconds": time.perf_counter() - start,
                    "train/steps": float(steps)})  # this rank's optimizer steps (the wandb step axis)
    return metrics


@torch.no_grad()
def recalibrate_batch_norm(task: Task, batches: Iterable[dict[str, Tensor]], num_batches: int,
                           device: torch.device, amp: str = "off") -> int:
    """Replace the running statistics of every BN layer the task trains with their plain average over
    ``num_batches`` training batches of the final weights ("precise BN"); returns the batches used.

    Running statistics are an exponential average over batches taken while the weights still moved; a
    small model whose decisions rest on small differences between frames can score far from its training
    accuracy with them (the demo's any-precision model swung between 50% and 100% from one epoch to the
    next). Frozen models (teachers, eval-mode parts) are left alone.
    """
    task.train(True)
    norms = [m for m in task.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches
    used = 0
    try:
        for batch in batches:
            if used >= num_batches:
                break
            video, label, _, _ = _valid(batch, device)
            if len(label) == 0:
                continue
            with autocast(video.device, amp):
                task.calibration_forward(video)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return used


@dataclass
class Predictions:
    """Scores of every evaluated video, gathered from all ranks and de-duplicated by index."""

    index: np.ndarray  # (N,) positions in the database index
    logits: np.ndarray  # (N, C) view-averaged logits
    extra: dict[str, np.ndarray]  # per-video arrays a predictor returned (e.g. decisions)
    skipped: int


@torch.no_grad()
def predict(predictor: Callable[[Tensor], dict[str, Tensor]], batches: Iterable[dict[str, Tensor]],
            device: torch.device, amp: str = "off") -> Predictions:
    """Run ``predictor(video (B, T, 3, S, S)) -> {"logits": (B, C), ...}`` over evaluation batches whose
    videos carry a views axis; every output is averaged over a video's views (logits, as the original
    does, and e.g. one-hot decisions into per-frame action shares)."""
    idx, logits, extra, skipped = [], [], {}, 0
    for batch in batches:
        video, _, index, bad = _valid(batch, device)
        skipped += bad
        if len(index) == 0:
            continue
        b, v = video.shape[:2]
        with autocast(video.device, amp):
            out = predictor(video.flatten(0, 1))
        logits.append(out["logits"].float().view(b, v, -1).mean(dim=1).cpu())
        for k, t in out.items():
            if k != "logits":
                extra.setdefault(k, []).append(t.float().view(b, v, *t.shape[1:]).mean(dim=1).cpu())
        idx.append(index.cpu())
    local = (torch.cat(idx).numpy() if idx else np.zeros(0, np.int64),
             torch.cat(logits).numpy() if logits else None,
             {k: torch.cat(v).numpy() for k, v in extra.items()}, skipped)
    parts = all_gather_objects(local)
    index = np.concatenate([p[0] for p in parts])
    if len(index) == 0:
        raise ValueError("evaluation produced no predictions (every record was skipped, or the set is empty)")
    order = np.unique(index, return_index=True)[1]  # shards can repeat videos to even out; keep one each
    cat = lambda arrays: np.concatenate([a for a in arrays if a is not None])[order]  # noqa: E731
    return Predictions(index[order], cat([p[1] for p in parts]),
                       {k: cat([p[2][k] for p in parts]) for k in parts[0][2]}, sum(p[3] for p in parts))


def class_ap(pred: Predictions, labels: tuple[tuple[int, ...], ...], num_classes: int) -> APResult:
    """Average precision of each class on the softmax scores, and their mean."""
    return average_precision(softmax(pred.logits), multi_hot([labels[i] for i in pred.index], num_classes))


def class_ap_table(predictions: Mapping[str, Predictions], labels: tuple[tuple[int, ...], ...],
                   classes: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Per-class AP of one or more scorings of the same videos (e.g. each bit width): the columns
    ``class, <name> (AP %)..., videos`` and one row per class (AP ``None`` where no video has it)."""
    first = next(iter(predictions.values()))
    positives = multi_hot([labels[i] for i in first.index], len(classes)).sum(axis=0)
    per = [class_ap(p, labels, len(classes)).per_class for p in predictions.values()]
    rows = [[name, *[None if np.isnan(ap[c]) else round(float(ap[c]), 4) for ap in per], int(positives[c])]
            for c, name in enumerate(classes)]
    return ["class", *predictions, "videos"], rows


def score(pred: Predictions, labels: tuple[tuple[int, ...], ...], num_classes: int, prefix: str = "val") -> dict[str, float]:
    """top-1, top-5 and mAP of predictions against every video's labels (the database index)."""
    primary = np.array([labels[i][0] if labels[i] else -1 for i in pred.index])
    ap = class_ap(pred, labels, num_classes)
    out = {f"{prefix}/top1": topk_accuracy(pred.logits, primary, 1), f"{prefix}/mAP": ap.mean,
           f"{prefix}/videos": float(len(pred.index)), f"{prefix}/skipped_records": float(pred.skipped)}
    if num_classes >= 5:
        out[f"{prefix}/top5"] = topk_accuracy(pred.logits, primary, 5)
    if ap.classes_without_positives:
        out[f"{prefix}/classes_without_positives"] = float(ap.classes_without_positives)
    return out
