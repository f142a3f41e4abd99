"""One Task per stage: the module a step runs (what DDP wraps), its losses, and its per-epoch hooks.

The loop is the same for every stage (``loop.py``); a Task says what one step computes:

* :class:`FPTask` (stages ``fp`` and ``policy_pretrain``): the TSN model, cross-entropy.
* :class:`AnyPrecisionTask` (``ap``): every bit width of the family in *one* forward of one module, so
  DDP syncs gradients once per step and no ``retain_graph`` is needed; the loss is the sum over widths
  of CE + KD from the frozen full-precision teacher.
* :class:`PolicyTask` (``policy``): the VideoIQ model on a frozen backbone; CE + KD + policy CE +
  balance + efficiency + entropy terms, and the Gumbel temperature set from the epoch number so that
  a resumed run continues exactly.

Frozen parts (teachers, the policy stage's backbone) are kept in eval mode whenever the task trains.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.sections import LossSection
from ..losses import action_costs, balance_loss, efficiency_loss, entropy_loss, soft_cross_entropy
from ..models import VideoIQ
from ..models.resnet import ResNet, fold_frames
from ..quant import bit_width, shared_weight_normalization


class Task:
    """What a stage's step computes. ``module(video)`` returns a dict of tensors; :meth:`losses` turns it
    into ``{"loss": total, ...parts}``; :meth:`logits` gives the video logits that are scored."""

    module: nn.Module

    def losses(self, out: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def logits(self, out: dict[str, Tensor]) -> Tensor:
        return out["logits"]

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each training epoch (0-based)."""

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    def calibration_forward(self, video: Tensor) -> None:
        """One forward of each trained model on ``video`` (in training mode, no gradient), so that its BN
        layers see the batch: what :func:`videoiq.train.loop.recalibrate_batch_norm` averages. A task whose
        models keep no BN statistics of their own raises ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} does not recalibrate batch norm")


class _Logits(nn.Module):
    """Wraps a recognition model so its forward returns ``{"logits": ...}`` like every task module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, video: Tensor) -> dict[str, Tensor]:
        return {"logits": self.model(video)}


class FPTask(Task):
    """Full-precision TSN training with cross-entropy (stages fp and policy_pretrain)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.module = _Logits(model)

    def losses(self, out: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        ce = F.cross_entropy(out["logits"], labels)
        return {"loss": ce, "loss/ce": ce.detach()}

    def calibration_forward(self, video: Tensor) -> None:
        self.model(video)


class _AllWidths(nn.Module):
    """One forward at every bit width of an any-precision model (and the frozen teacher, if any)."""

    def __init__(self, model: ResNet, bit_widths: tuple[int, ...], teacher: nn.Module | None):
        super().__init__()
        self.model, self.bit_widths, self.teacher = model, bit_widths, teacher

    def forward(self, video: Tensor) -> dict[str, Tensor]:
        frames, b, t = fold_frames(video, type(self.model).__name__)
        per_width = []
        with shared_weight_normalization(self.model):  # the work every width shares, done once
            stem = self.model.stem(frames, passes=len(self.bit_widths))
            for bits in self.bit_widths:
                with bit_width(self.model, bits):
                    per_width.append(self.model.forward_head(self.model.stages(stem).view(b, t, -1)))
        out = {"logits_per_width": torch.stack(per_width)}
        if self.teacher is not None:
            with torch.no_grad():
                out["teacher"] = self.teacher(video)
        return out

    def train(self, mode: bool = True) -> "_AllWidths":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self


class AnyPrecisionTask(Task):
    """Any-precision training: ``sum_b [CE(z_b, y) + kd_weight * KD(z_b, teacher)]`` over the family.

    ``kind`` ``ce`` drops the KD term, ``kd`` drops CE. Without a teacher the widths after the first
    distil from the first (max) width's detached prediction, which trains with CE only.
    """

    def __init__(self, model: ResNet, bit_widths: tuple[int, ...], teacher: nn.Module | None,
                 kind: str = "kd_ce", kd_weight: float = 1.0):
        if teacher is not None:
            teacher.requires_grad_(False)
        self.model, self.bit_widths, self.teacher = model, tuple(bit_widths), teacher
        self.kind, self.kd_weight = kind, kd_weight
        self.module = _AllWidths(model, self.bit_widths, teacher)

    def losses(self, out: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        parts: dict[str, Tensor] = {}
        total = out["logits_per_width"].new_zeros(())
        for i, (bits, logits) in enumerate(zip(self.bit_widths, out["logits_per_width"], strict=True)):
            target = out["teacher"] if self.teacher is not None else (out["logits_per_width"][0] if i else None)
            loss = logits.new_zeros(())
            if self.kind in ("ce", "kd_ce") or target is None:
                loss = loss + F.cross_entropy(logits, labels)
            if self.kind in ("kd", "kd_ce") and target is not None:
                loss = loss + self.kd_weight * soft_cross_entropy(logits, target)
            parts[f"loss/b{bits}"] = loss.detach()
            total = total + loss
        return {"loss": total, **parts}

    def logits(self, out: dict[str, Tensor]) -> Tensor:
        return out["logits_per_width"][0]

    def calibration_forward(self, video: Tensor) -> None:
        for bits in self.bit_widths:  # each width's own BNs; the shared stem BN sees the batch once per width
            with bit_width(self.model, bits):
                self.model(video)


class _VideoIQStep(nn.Module):
    def __init__(self, model: VideoIQ):
        super().__init__()
        self.model = model

    def forward(self, video: Tensor) -> dict[str, Tensor]:
        return {k: v for k, v in self.model(video)._asdict().items() if v is not None}

    def train(self, mode: bool = True) -> "_VideoIQStep":
        super().train(mode)
        self.model.backbone.eval()  # frozen: its BN statistics and dropout stay as the ap stage left them
        return self


class PolicyTask(Task):
    """Policy training on a frozen any-precision backbone."""

    def __init__(self, model: VideoIQ, loss: LossSection, temperature_init: float, temperature_decay: float):
        model.backbone.requires_grad_(False)
        self.model, self.loss = model, loss
        self.temperature_init, self.temperature_decay = temperature_init, temperature_decay
        self.costs = action_costs(model.actions)
        self.module = _VideoIQStep(model)

    def on_epoch_start(self, epoch: int) -> None:
        self.model.policy.set_temperature(self.temperature_init * self.temperature_decay ** epoch)

    def losses(self, out: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        w = self.loss  # the loss section: which terms, and their weights
        parts = {"loss/ce": F.cross_entropy(out["logits"], labels)}
        if w.kd_frames == "kept":
            kd_target = out["kept_target_logits"]
        else:
            kd_target = out.get("teacher_logits", out["reference_logits"])
        if w.kind in ("kd", "kd_ce"):
            parts["loss/kd"] = w.kd_weight * soft_cross_entropy(out["logits"], kd_target)
        if w.kind == "kd":
            del parts["loss/ce"]
        if w.policy_ce_weight > 0 and "policy_logits" in out:
            parts["loss/policy_ce"] = w.policy_ce_weight * F.cross_entropy(out["policy_logits"], labels)
        if w.balance_weight > 0:
            parts["loss/balance"] = w.balance_weight * balance_loss(out["decisions"])
        if w.efficiency_weight > 0:
            parts["loss/efficiency"] = w.efficiency_weight * efficiency_loss(out["decisions"],
                                                                             self.costs.to(labels.device))
        if w.entropy_weight > 0:
            parts["loss/entropy"] = w.entropy_weight * entropy_loss(out["log_probs"])
        total = sum(parts.values())
        return {"loss": total, **{k: v.detach() for k, v in parts.items()}}
