"""Frame kinds: which frames of each video are of which kind, for reports of what a model does per kind.

A dataset may carry a ``<split>.frame_kinds.json`` file beside its ``<split>.lmdb`` (``videoiq data
synth`` writes one; any annotated set can). Evaluation then reports the policy's actions per frame kind
and, for recognition checkpoints, how well each width reads each kind of frame. The file::

    {"kinds": {"blank": null, "coarse": [0, 1, 2, 3, 0, 1, 2, 3], "fine": [0, 0, 0, 0, 1, 1, 1, 1]},
     "videos": {"<record key>": "0012210...", ...}}

``kinds`` names each kind (its position is the digit used in ``videos``) and says what a frame of that
kind shows: ``null`` when it shows nothing about the class, else a group id per class, two classes
sharing an id when such a frame cannot tell them apart (a frame "reads correctly" when its own
prediction falls in the label's group). ``videos`` gives, per record key, one digit per stored frame.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from ..errors import VideoiqError
from .sampling import eval_indices
from .shards import VideoSet

log = logging.getLogger("videoiq.data")


class FrameKindsError(VideoiqError, ValueError):
    """A frame kinds file that does not fit its database; the message names the file and the problem."""


def frame_kinds_path(root: str, split: str) -> str:
    """Where the frame kinds of a split live: ``<root>/<split>.frame_kinds.json``."""
    return os.path.join(root, f"{split}.frame_kinds.json")


@dataclass(frozen=True)
class FrameKinds:
    """Kind names, what each kind shows (class -> group, or ``None``), and each video's kind per frame."""

    names: tuple[str, ...]
    groups: tuple[tuple[int, ...] | None, ...]
    videos: dict[str, str]

    def to_json(self) -> str:
        kinds = {n: (list(g) if g is not None else None) for n, g in zip(self.names, self.groups, strict=True)}
        return json.dumps({"kinds": kinds, "videos": self.videos}, indent=0) + "\n"

    def sampled(self, db: VideoSet, segments: int, frames_per_segment: int = 1) -> np.ndarray:
        """``(videos, frames)`` kind ids of the frames evaluation samples (one clip: the segment centres) from
        every video of ``db``, in database order."""
        out = np.empty((len(db), segments * frames_per_segment), np.int64)
        for i, (key, n) in enumerate(zip(db.index.keys, db.index.num_frames, strict=True)):
            digits = self.videos.get(key)
            if digits is None:
                raise FrameKindsError(f"{db.path}: video {key!r} has no frame kinds in its frame kinds file")
            if len(digits) != n:
                raise FrameKindsError(f"{db.path}: video {key!r} has {n} frames, its frame kinds list {len(digits)}")
            out[i] = [int(digits[j]) for j in eval_indices(n, segments, frames_per_segment)]
        return out

    def reads_correctly(self, kind: int, predicted: np.ndarray, label: np.ndarray) -> np.ndarray:
        """Whether frames of ``kind`` predicted as ``predicted`` fall in their label's group."""
        groups = self.groups[kind]
        if groups is None:
            raise FrameKindsError(f"frames of kind {self.names[kind]!r} show nothing; there is nothing to read")
        table = np.asarray(groups)
        return table[predicted] == table[label]


def load_frame_kinds(path: str, num_classes: int) -> FrameKinds:
    """Read and check a frame kinds file (see the module docstring); errors name the file and the entry."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise FrameKindsError(f"{path}: not a readable frame kinds file ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("kinds"), dict) or not isinstance(raw.get("videos"), dict):
        raise FrameKindsError(f"{path}: expected {{\"kinds\": {{name: groups or null}}, \"videos\": {{key: digits}}}}")
    kinds = raw["kinds"]
    if not 1 <= len(kinds) <= 10:
        raise FrameKindsError(f"{path}: 'kinds' must name 1 to 10 kinds (one digit each), got {len(kinds)}")
    groups = []
    for name, g in kinds.items():
        if g is not None and (not isinstance(g, list) or len(g) != num_classes
                              or not all(isinstance(x, int) and not isinstance(x, bool) for x in g)):
            raise FrameKindsError(f"{path}: kind {name!r} must be null or a list of {num_classes} integer groups "
                                  f"(one per class), got {g!r}")
        groups.append(tuple(g) if g is not None else None)
    allowed = set("0123456789"[: len(kinds)])
    for key, digits in raw["videos"].items():
        if not isinstance(digits, str) or not digits or not set(digits) <= allowed:
            raise FrameKindsError(f"{path}: video {key!r} must map to a string of kind digits in "
                                  f"{''.join(sorted(allowed))}, got {digits!r}")
    return FrameKinds(tuple(kinds), tuple(groups), dict(raw["videos"]))


def find_frame_kinds(root: str, split: str, db: VideoSet) -> FrameKinds | None:
    """The frame kinds of a split when its file exists, checked against the database, else ``None``."""
    path = frame_kinds_path(root, split)
    if not os.path.isfile(path):
        return None
    return load_frame_kinds(path, db.num_classes)


@dataclass(frozen=True)
class SampledKinds:
    """The frame kinds of the frames evaluation samples: kind ids ``(videos, frames)`` in database order."""

    kinds: FrameKinds
    ids: np.ndarray

    @classmethod
    def of(cls, root: str, split: str, db: VideoSet, segments: int, frames_per_segment: int = 1,
           num_clips: int = 1) -> "SampledKinds | None":
        """For a split's database when it has a frame kinds file and evaluation takes one clip per video."""
        kinds = find_frame_kinds(root, split, db)
        if kinds is None:
            return None
        if num_clips != 1:
            log.warning("frame kinds: reported only for one clip per video (eval.num_clips is %d)", num_clips)
            return None
        return cls(kinds, kinds.sampled(db, segments, frames_per_segment))
