"""Per-dataset constants of the four paper datasets, and ``custom`` for everything else.

This is the one home of class counts, list-file names, separators, frame templates and the metric
each dataset reports. ``custom`` datasets (the generated demo set, a user's own) take their class
count from the LMDB metadata instead.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from ..errors import UnknownNameError


@dataclass(frozen=True)
class DatasetSpec:
    """What the original's ``DATASET_CONFIG`` said about a dataset."""

    name: str
    num_classes: int | None  # None: read from the dataset's LMDB metadata
    train_list: str
    val_list: str
    separator: str
    frame_template: str
    min_train_frames: int  # shorter training videos are dropped (the original's filter_video)
    metric: Literal["mAP", "top1"]


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("activitynet", 200, "train.txt", "val.txt", " ", "image_{:05d}.jpg", 0, "mAP"),
        DatasetSpec("fcvid", 239, "train.txt", "val.txt", " ", "image_{:05d}.jpg", 0, "mAP"),
        DatasetSpec("mini-sports1m", 487, "train.txt", "val.txt", ";", "{:05d}.jpg", 0, "mAP"),
        DatasetSpec("mini_kinetics400", 200, "mini_train.txt", "mini_val.txt", ";", "{:05d}.jpg", 30, "top1"),
        DatasetSpec("custom", None, "train.txt", "val.txt", " ", "{:05d}.jpg", 0, "mAP"),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a dataset by name, with a suggestion for a near miss."""
    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown dataset {name!r}{hint} Known: {', '.join(DATASETS)}")
    return DATASETS[name]
