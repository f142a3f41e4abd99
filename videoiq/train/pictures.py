"""Pictures made from a validation pass's predictions: a few videos' sampled frames with the action the
policy took on each (drawn by :mod:`videoiq.strips`), for the policy stage's wandb run and the eval stage."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..data.clips import ClipSpec, decode_clip, read_clip
from ..data.shards import VideoSet
from ..strips import decision_strip, save_strip
from .scoring import Predictions


def validation_strip(db: VideoSet, spec: ClipSpec, pred: Predictions, actions: Sequence[str],
                     videos: int = 8) -> Image.Image:
    """The strip of up to ``videos`` scored videos of ``db`` (one per class first), from the frames evaluation
    sampled (its first view) and the decisions in ``pred.extra["decisions"]``; titled key, label, prediction."""
    classes = db.classes
    chosen, seen = [], set()
    for row, position in enumerate(pred.index):  # one video of each class first, then the rest in order
        label = db.index.labels[position][0] if db.index.labels[position] else -1
        if label not in seen:
            chosen.append(row)
            seen.add(label)
    first = set(chosen)
    chosen += [r for r in range(len(pred.index)) if r not in first]
    chosen = sorted(chosen[:videos])
    frames, acts, titles = [], [], []
    for row in chosen:
        position = int(pred.index[row])
        clip = decode_clip(spec, read_clip(db, position, spec, rng=None), rng=None)  # (views, T, 3, S, S)
        frames.append(clip[0].permute(0, 2, 3, 1).numpy())
        acts.append([actions[a] for a in pred.extra["decisions"][row].argmax(axis=-1)])
        label = db.index.labels[position]
        truth = classes[label[0]] if label else "?"
        titles.append(f"{db.index.keys[position].split('/')[-1]}: {truth} -> {classes[int(pred.logits[row].argmax())]}")
    return decision_strip(frames, acts, titles)


def decisions_picture(db: VideoSet, spec: ClipSpec, pred: Predictions, actions: Sequence[str],
                      path: str | os.PathLike) -> Path:
    """Write the :func:`validation_strip` of ``db``'s scored videos to ``path`` (PNG); returns the path."""
    return Path(save_strip(validation_strip(db, spec, pred, actions), path))
