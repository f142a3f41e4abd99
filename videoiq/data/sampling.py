"""Which frames of a video make a clip: TSN segment sampling, as pure index functions.

A video of ``n`` frames is cut into ``segments`` equal segments and ``frames_per_segment`` frames are
taken from each, giving ``segments * frames_per_segment`` indices (0-based, sorted). Training draws
random offsets; evaluation takes fixed positions, so the same video always gives the same clip.

Two training variants:

* ``"independent"`` (default): each segment draws its own offset(s), as the original TSN does.
* ``"shared"``: one set of offsets for every segment, as the VideoIQ code does;
  choose it only to replicate the original's sampling.

Evaluation deviates from the original in one place, on purpose: for videos shorter than the clip, the
original re-seeds numpy's global RNG and draws random frames; here the same centred formula applies
(frames repeat in order), which is deterministic without touching any global RNG.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

SegmentOffsets = Literal["independent", "shared"]


def train_indices(
    n: int, segments: int, frames_per_segment: int = 1, rng: np.random.Generator | None = None,
    offsets: SegmentOffsets = "independent",
) -> np.ndarray:
    """Random TSN training indices of a video with ``n`` frames."""
    _check(n, segments, frames_per_segment)
    rng = rng if rng is not None else np.random.default_rng()
    total = segments * frames_per_segment
    seg_len = n // segments
    if seg_len >= frames_per_segment:
        starts = np.repeat(np.arange(segments) * seg_len, frames_per_segment)
        if offsets == "shared":
            picks = np.tile(np.sort(rng.choice(seg_len, frames_per_segment, replace=False)), segments)
        elif offsets == "independent":
            picks = np.concatenate(
                [np.sort(rng.choice(seg_len, frames_per_segment, replace=False)) for _ in range(segments)]
            )
        else:
            raise ValueError(f"offsets must be 'independent' or 'shared', got {offsets!r}")
        return starts + picks
    # Too short for distinct frames per segment: draw from the whole video, sorted (the original's rule).
    return np.sort(rng.choice(n, total, replace=n < total))


def eval_indices(n: int, segments: int, frames_per_segment: int = 1, clip: int = 0, num_clips: int = 1) -> np.ndarray:
    """Fixed indices of clip ``clip`` of ``num_clips``: clip c takes the point (c + 0.5) / num_clips of each
    segment's sub-interval, so one clip is the segment centres, ``int(tick/2 + tick*k)`` with tick = n/segments."""
    _check(n, segments, frames_per_segment)
    if not 0 <= clip < num_clips:
        raise ValueError(f"clip must lie in [0, {num_clips}), got {clip}")
    slots = segments * frames_per_segment
    tick = n / slots
    positions = tick * (np.arange(slots) + (clip + 0.5) / num_clips)
    return np.minimum(positions.astype(np.int64), n - 1)


def _check(n: int, segments: int, frames_per_segment: int) -> None:
    if n < 1:
        raise ValueError(f"a video needs at least one frame, got {n}")
    if segments < 1 or frames_per_segment < 1:
        raise ValueError(f"segments and frames_per_segment must be >= 1, got {segments} and {frames_per_segment}")
