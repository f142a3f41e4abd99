"""Scoring: predictions over evaluation batches, and the metrics of each kind of model on them.

* :func:`gather_predictions` runs a predictor over evaluation batches (views averaged, gathered from every rank);
* :func:`score` gives top-1/top-5/mAP, :func:`class_ap_table` the per-class AP;
* :func:`evaluate_widths` and :func:`evaluate_policy` are the validation passes of the recognition models
  (fp, ap, policy_pretrain) and of VideoIQ (policy) (each an :class:`Evaluation`); the ``eval`` stage scores a policy
  checkpoint with the same :func:`evaluate_policy` (argmax or sampled decisions) and
  :class:`~videoiq.data.frame_kinds.SampledKinds`; pictures of predictions are in :mod:`.pictures`.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..data.frame_kinds import FrameKinds, SampledKinds
from ..distributed import all_gather_objects
from ..errors import VideoiqError
from ..flops import action_usage
from ..metrics import APResult, average_precision, multi_hot, softmax, topk_accuracy
from ..models import Int8ResNet, VideoIQ
from ..models.resnet import fold_frames
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
def gather_predictions(predictor: Callable[[Tensor], dict[str, Tensor]], batches: Iterable[dict[str, Tensor]],
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
        raise VideoiqError("evaluation produced no predictions (every record was skipped, or the set is empty)")
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
    """One validation pass: the metrics and the predictions they were scored from (``logits``: the main model's)."""

    metrics: dict[str, float]
    predictions: Predictions


def frame_logits(model: nn.Module, video: Tensor, bits: int | None = None,
                 integer: Int8ResNet | None = None) -> Tensor:
    """Each frame's own logits ``(B, T, C)`` of a TSN model (its video logits are their mean); with ``integer``
    (the model's :class:`~videoiq.models.Int8ResNet`) at width ``bits`` on integer kernels."""
    if integer is None:
        return model.frame_logits(model.forward_features(video))
    frames, b, t = fold_frames(video, "eval")
    return integer.model.frame_logits(integer.frame_features(frames, bits).view(b, t, -1))


def at_width(pred: Predictions, bits: int | None) -> Predictions:
    """The predictions of one width of an :func:`evaluate_widths` pass (``None``: a full-precision model's)."""
    frames = pred.extra.get(f"b{bits}/frames")
    return Predictions(pred.index, pred.extra[f"b{bits}"], {} if frames is None else {"frame_logits": frames},
                       pred.skipped)


def kind_accuracy(pred: Predictions, kinds: SampledKinds, labels: tuple[tuple[int, ...], ...]) -> dict[str, float]:
    """``val/frames/<kind>``: % of the frames of each kind that show something whose own prediction falls in
    the label's group (what a frame of that kind can tell), from ``frame_logits``."""
    predicted = pred.extra["frame_logits"].argmax(axis=-1)  # (N, T)
    truth = np.array([labels[i][0] for i in pred.index])[:, None].repeat(predicted.shape[1], axis=1)
    ids = kinds.ids[pred.index]
    out = {}
    for k, name in enumerate(kinds.kinds.names):
        mask = ids == k
        if kinds.kinds.groups[k] is not None and mask.any():
            correct = kinds.kinds.reads_correctly(k, predicted[mask], truth[mask])
            out[f"val/frames/{name}"] = 100.0 * float(correct.mean())
    return out


def evaluate_widths(model: nn.Module, bit_widths: Sequence[int] | None, batches: Iterable[dict[str, Tensor]],
                    device: torch.device, labels: tuple[tuple[int, ...], ...], num_classes: int,
                    amp: str = "off", *, engine: str = "float", kinds: SampledKinds | None = None,
                    cost: Any = None) -> Evaluation:
    """The validation pass of a TSN recognition model: an any-precision model at every width of ``bit_widths``
    in one pass over the data (every width scores the same clips; ``val/b<bits>/...`` of each, the main
    ``val/...`` metrics the first (max) width's), or a full-precision model with ``bit_widths=None``.

    ``engine="int8"`` runs the quantized widths on integer kernels; with ``kinds`` each width also gets its
    frames' accuracy per frame kind (``frames/<kind>``), with ``cost`` (:func:`~videoiq.flops.video_cost`)
    its GMACs per video (``gflops``)."""
    widths: tuple[int | None, ...] = tuple(bit_widths) if bit_widths else (None,)
    integer = Int8ResNet(model) if engine == "int8" else None

    def all_widths(v: Tensor) -> dict[str, Tensor]:
        out = {}
        for bits in widths:
            with bit_width(model, bits) if bits is not None else contextlib.nullcontext():
                frames = frame_logits(model, v, bits, integer)
            out[f"b{bits}"] = frames.mean(dim=1)
            if kinds is not None:
                out[f"b{bits}/frames"] = frames
        return {"logits": out[f"b{widths[0]}"], **out}

    pred = gather_predictions(all_widths, batches, device, amp)
    metrics = score(pred, labels, num_classes)
    for bits in widths:
        per = at_width(pred, bits)
        m = score(per, labels, num_classes)
        if cost is not None:
            m["val/gflops"] = cost.gmacs({f"{bits or 32}bit": 1.0}, with_policy=False).total
        if kinds is not None:
            m.update(kind_accuracy(per, kinds, labels))
        metrics.update(m if bits is None else {k.replace("val/", f"val/b{bits}/"): v for k, v in m.items()})
    return Evaluation(metrics, pred)  # its logits are the first width's; :func:`at_width` gives each


def evaluate_policy(model: VideoIQ, cost: Any, kinds: SampledKinds | None, batches: Iterable[dict[str, Tensor]],
                    device: torch.device, labels: tuple[tuple[int, ...], ...], num_classes: int,
                    amp: str = "off", deterministic: bool = True, engine: str = "float") -> Evaluation:
    """A validation pass of VideoIQ, argmax decisions (or Gumbel samples with ``deterministic=False``):
    :func:`policy_metrics`."""
    pred = gather_predictions(lambda v: decide(model, v, deterministic, engine), batches, device, amp)
    return Evaluation(policy_metrics(pred, model.actions, cost, labels, num_classes, kinds=kinds), pred)


def decide(model: VideoIQ, video: Tensor, deterministic: bool = True, engine: str = "float") -> dict[str, Tensor]:
    """VideoIQ logits and one-hot decisions of a batch (argmax, or Gumbel samples at the model's temperature):
    the dense forward as trained (``engine="float"``), or conditional execution on integer kernels (``"int8"``)."""
    if engine == "float":
        out = model(video, deterministic=deterministic)
        return {"logits": out.logits, "decisions": out.decisions}
    logits, decisions = model.infer(video, deterministic=deterministic, engine=engine)
    return {"logits": logits, "decisions": decisions}


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
