"""The one training loop, shared by every stage (scoring is :mod:`videoiq.train.scoring`); no Ray, no argparse.

Batches are dicts ``{"video": uint8, "label", "index", "valid"}`` from either reader (the PyTorch
``DataLoader`` or a Ray Data shard). Videos are normalised on the device; samples flagged invalid
(bad records skipped under ``data.on_error: skip``) are dropped and counted.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sized

import torch
from torch import Tensor, nn

from ..data.transforms import normalize
from ..distributed import all_reduce_sum
from ..errors import VideoiqError
from .tasks import Task


class NonFiniteLoss(VideoiqError, RuntimeError):
    """A NaN or infinite loss: training stops before the step can touch the weights."""


def valid_batch(batch: dict[str, Tensor], device: torch.device) -> tuple[Tensor, Tensor, Tensor, int]:
    """A batch on ``device``, normalised, without its invalid samples: ``(video, label, index, dropped)``."""
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
        video, label, _, bad = valid_batch(batch, device)
        skipped += bad
        if len(label) == 0:
            continue
        out, losses = train_step(task, module, video, label, optimizer, amp=amp,
                                 where=f"epoch {epoch + 1} step {steps + 1}")
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
            video, label, _, _ = valid_batch(batch, device)
            if len(label) == 0:
                continue
            with autocast(video.device, amp):
                task.calibration_forward(video)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    return used
