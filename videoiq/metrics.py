"""Evaluation metrics on video scores: top-k accuracy and torchnet-style mAP, in numpy.

mAP is the mean over classes of the non-interpolated average precision of the softmax scores: rank
the videos by score, and average the precision at the rank of each positive. The original
(torchnet's ``mAPMeter``) counts a class without positives as AP 0; here such classes are left out
of the mean and counted instead (``classes_without_positives``), which only differs on evaluation
sets missing a class; the paper datasets' validation sets have every class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Share (in %) of videos whose label is among the ``k`` highest scores; labels ``(N,)`` int."""
    if len(labels) == 0:
        raise ValueError("no videos to score")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(100.0 * (top == labels[:, None]).any(axis=1).mean())


@dataclass(frozen=True)
class APResult:
    """Per-class AP (NaN where a class has no positive) and their mean over the other classes, in %."""

    per_class: np.ndarray
    mean: float
    classes_without_positives: int


def average_precision(scores: np.ndarray, targets: np.ndarray) -> APResult:
    """AP per class of ``scores (N, C)`` against multi-hot ``targets (N, C)``, and their mean (mAP, %)."""
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in shape")
    order = np.argsort(-scores, axis=0, kind="stable")
    hits = np.take_along_axis(targets.astype(np.float64), order, axis=0)
    positives = hits.sum(axis=0)
    precision_at = np.cumsum(hits, axis=0) / np.arange(1, len(scores) + 1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision_at * hits).sum(axis=0) / positives
    ap[positives == 0] = np.nan
    present = ~np.isnan(ap)
    mean = float(100.0 * ap[present].mean()) if present.any() else float("nan")
    return APResult(100.0 * ap, mean, int((~present).sum()))


def multi_hot(labels: list[tuple[int, ...]], num_classes: int) -> np.ndarray:
    """``(N, C)`` 0/1 targets from each video's label tuple."""
    out = np.zeros((len(labels), num_classes), np.float32)
    for i, ls in enumerate(labels):
        out[i, list(ls)] = 1.0
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def uniform_line(points: list[tuple[float, float]], cost: float) -> float | None:
    """The accuracy uniform precision reaches at ``cost``: ``points`` are ``(cost, accuracy)`` of the uniform
    widths; between two adjacent ones (by cost), the straight line of mixing them (a share of the videos at
    each width). ``None`` when ``cost`` is below the cheapest width; above the dearest, its accuracy."""
    ordered = sorted(points)
    if not ordered or cost < ordered[0][0]:
        return None
    for (c0, a0), (c1, a1) in zip(ordered, ordered[1:], strict=False):
        if c0 <= cost <= c1:
            return a0 if c1 == c0 else a0 + (a1 - a0) * (cost - c0) / (c1 - c0)
    return ordered[-1][1]
