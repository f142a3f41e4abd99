"""Scoring: predictions over evaluation batches, and the metrics of each kind of model on them.

* :func:`predict` runs a predictor over evaluation batches (views averaged, gathered from every rank);
* :func:`score` gives top-1/top-5/mAP, :func:`class_ap_table` the per-class AP;
* :func:`evaluate_recognition`, :func:`evaluate_widths` and :func:`evaluate_policy` are the validation
  passes of the fp, ap and policy stages (each an :class:`Evaluation`); the ``eval`` stage scores a policy
  checkpoint with the same :func:`evaluate_policy` (argmax or sampled decisions) and :class:`SampledKinds`;
* :func:`decisions_picture` draws a few validation videos' frames with the action taken on each.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..config import StageConfig
from ..data.frame_kinds import FrameKinds, find_frame_kinds
from ..data.records import VideoDB
from ..distributed import all_gather_objects
from ..flops import action_usage
from ..metrics import APResult, average_precision, multi_hot, softmax, topk_accuracy
from ..models import VideoIQ
from ..quant import bit_width
from .loop import autocast, valid_batch

log = logging.getLogger("videoiq.train")


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
        video, _, index, bad = valid_batch(batch, device)
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


def score(pred: Predictions, labels: tuple[tuple[int, ...], ...], num_classes: int,
          prefix: str = "val") -> dict[str, float]:
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


class Evaluation(NamedTuple):
    """One validation pass: the metrics and the predictions they were scored from (the main model's)."""

    metrics: dict[str, float]
    predictions: Predictions


def evaluate_recognition(model: nn.Module, batches: Iterable[dict[str, Tensor]], device: torch.device,
                         labels: tuple[tuple[int, ...], ...], num_classes: int, amp: str = "off") -> Evaluation:
    """The validation pass of a full-precision model (fp and policy_pretrain stages)."""
    pred = predict(lambda v: {"logits": model(v)}, batches, device, amp)
    return Evaluation(score(pred, labels, num_classes), pred)


def evaluate_widths(model: nn.Module, bit_widths: Sequence[int], batches: Iterable[dict[str, Tensor]],
                    device: torch.device, labels: tuple[tuple[int, ...], ...], num_classes: int,
                    amp: str = "off") -> Evaluation:
    """The validation pass of an any-precision model: one pass over the data, every width scoring the same
    clips; the main metrics are the first (max) width's, plus ``val/b<bits>/top1`` and ``/mAP`` of each."""
    def all_widths(v: Tensor) -> dict[str, Tensor]:
        out = {}
        for bits in bit_widths:
            with bit_width(model, bits):
                out[f"b{bits}"] = model(v)
        return {"logits": out[f"b{bit_widths[0]}"], **out}

    pred = predict(all_widths, batches, device, amp)
    metrics = score(pred, labels, num_classes)
    for bits in bit_widths:
        per = Predictions(pred.index, pred.extra[f"b{bits}"], {}, pred.skipped)
        metrics.update({k.replace("val/", f"val/b{bits}/"): v for k, v in score(per, labels, num_classes).items()
                        if k.endswith(("top1", "mAP"))})
    return Evaluation(metrics, pred)


def evaluate_policy(model: VideoIQ, cost: Any, kinds: "SampledKinds | None", batches: Iterable[dict[str, Tensor]],
                    device: torch.device, labels: tuple[tuple[int, ...], ...], num_classes: int,
                    amp: str = "off", deterministic: bool = True, engine: str = "float") -> Evaluation:
    """A validation pass of VideoIQ, argmax decisions (or Gumbel samples with ``deterministic=False``):
    :func:`policy_metrics`."""
    pred = predict(lambda v: decide(model, v, deterministic, engine), batches, device, amp)
    return Evaluation(policy_metrics(pred, model.actions, cost, labels, num_classes, kinds=kinds), pred)


def decide(model: VideoIQ, video: Tensor, deterministic: bool = True, engine: str = "float") -> dict[str, Tensor]:
    """VideoIQ logits and one-hot decisions of a batch (argmax, or Gumbel samples at the model's temperature):
    the dense forward as trained (``engine="float"``), or conditional execution on integer kernels (``"int8"``)."""
    if engine == "float":
        out = model(video, deterministic=deterministic)
        return {"logits": out.logits, "decisions": out.decisions}
    logits, decisions = model.infer(video, deterministic=deterministic, engine=engine)
    return {"logits": logits, "decisions": decisions}


@dataclass(frozen=True)
class SampledKinds:
    """The frame kinds of the frames evaluation samples: kind ids ``(videos, frames)`` in database order."""

    kinds: FrameKinds
    ids: np.ndarray

    @classmethod
    def of(cls, cfg: StageConfig, split: str, db: VideoDB, num_clips: int = 1) -> "SampledKinds | None":
        """For a split's database when it has a frame kinds file and evaluation takes one clip per video."""
        kinds = find_frame_kinds(cfg.data.root, split, db)
        if kinds is None:
            return None
        if num_clips != 1:
            log.warning("frame kinds: reported only for one clip per video (eval.num_clips is %d)", num_clips)
            return None
        return cls(kinds, kinds.sampled(db, cfg.data.num_frames, cfg.data.frames_per_segment))


def kind_usage(decisions: np.ndarray, kind_ids: np.ndarray, kinds: FrameKinds, actions: tuple[str, ...],
               prefix: str = "val") -> dict[str, float]:
    """``<prefix>/usage/<kind>/<action>``: % of the frames of each kind at each action (decisions ``(N, T, A)``)."""
    out = {}
    for k, name in enumerate(kinds.names):
        chosen = decisions[kind_ids == k]
        if len(chosen):
            out.update({f"{prefix}/usage/{name}/{a}": 100.0 * float(u)
                        for a, u in zip(actions, chosen.mean(axis=0), strict=True)})
    return out


def policy_metrics(pred: Predictions, actions: tuple[str, ...], cost: Any, labels: tuple[tuple[int, ...], ...],
                   num_classes: int, prefix: str = "val", kinds: SampledKinds | None = None) -> dict[str, float]:
    """Accuracy, mAP, precision usage (per frame kind too, with ``kinds``) and GMACs per video of VideoIQ
    predictions."""
    metrics = score(pred, labels, num_classes, prefix)
    usage = action_usage(torch.from_numpy(pred.extra["decisions"]), actions)
    metrics.update({f"{prefix}/usage/{a}": 100.0 * u for a, u in usage.items()})
    if kinds is not None:
        metrics.update(kind_usage(pred.extra["decisions"], kinds.ids[pred.index], kinds.kinds, actions, prefix))
    g = cost.gmacs(usage)
    metrics.update({f"{prefix}/gflops": g.total, f"{prefix}/gflops_backbone": g.backbone,
                    f"{prefix}/gflops_run": cost.gmacs(usage, charge_skipped=False).total})
    return metrics


def decisions_picture(cfg: StageConfig, pred: Predictions, actions: tuple[str, ...], path: Path) -> Path:
    """Write the strip of a few validation videos' frames with the action taken on each (``videoiq.strips``)."""
    from ..data.clips import ClipSpec
    from ..strips import save_strip, validation_strip

    db = VideoDB(cfg.data.lmdb_path(cfg.data.val_split))
    return Path(save_strip(validation_strip(db, ClipSpec.from_config(cfg.data, train=False), pred, actions), path))
