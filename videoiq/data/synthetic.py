"""A generated video classification set for the demo and the tests: coloured shapes moving over clutter.

The class of a video is the colour and shape of its one coloured object (``red_disc``, ``blue_cross``,
...). Half the videos also have a smaller grey distractor shape; every frame has a shaded background
and sensor noise, and in a
random share of the frames (up to ``max_hidden``) the object is hidden behind a grey occluder: those
frames say nothing about the class, which is what a precision policy should learn to spend little on.
A tiny ResNet at 32-64 px learns it well above chance in minutes on a CPU, yet not trivially at 2 bits.

Videos are written as real files (mp4 with libx264 by default, or JPEG frame folders) plus list files
and ``classes.txt``, and then converted with the same converters users run on their own data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, TextIO

import numpy as np

from .build import BuildReport, build_frames, build_videos, parse_frame_list, parse_video_list, read_class_names
from ..progress import Progress
from .codec import encode_jpeg, write_video

SHAPES = ("disc", "cross", "square", "triangle")  # the first two differ most at a few pixels
COLOURS = {"red": (215, 45, 40), "blue": (40, 85, 220), "green": (45, 175, 60), "yellow": (225, 200, 40)}
MAX_CLASSES = len(SHAPES) * len(COLOURS)


@dataclass(frozen=True)
class SynthConfig:
    """Size and difficulty of the generated set."""

    num_classes: int = 8
    train_per_class: int = 24
    val_per_class: int = 8
    min_frames: int = 24
    max_frames: int = 40
    size: int = 64
    fps: int = 8
    max_hidden: float = 0.5  # at most this share of a video's frames hides the object
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must lie in [2, {MAX_CLASSES}], got {self.num_classes}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if self.size < 16 or self.size % 2:
            raise ValueError(f"size must be even and >= 16, got {self.size}")
        if self.train_per_class < 1 or self.val_per_class < 1:
            raise ValueError("train_per_class and val_per_class must be >= 1")
        if not 0.0 <= self.max_hidden < 1.0:
            raise ValueError(f"max_hidden must lie in [0, 1), got {self.max_hidden}")


def class_names(num_classes: int) -> list[str]:
    """``colour_shape`` names, colours cycling fastest: 8 classes are 4 colours x (disc, cross)."""
    return [f"{c}_{s}" for s in SHAPES for c in COLOURS][:num_classes]


def _mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "disc":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
    if shape == "triangle":
        return (dy <= 0.8 * r) & (np.abs(dx) <= 0.6 * (dy + r))
    arm = 0.32 * r
    return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))


def _bouncing(rng: np.random.Generator, n: int, size: int, r: float) -> np.ndarray:
    """(n, 2) centre positions moving at constant speed and bouncing off the borders."""
    lo, hi = r, size - r
    pos = rng.uniform(lo, hi, 2)
    vel = rng.uniform(0.6, 2.0, 2) * rng.choice([-1, 1], 2) * size / 64
    out = np.empty((n, 2))
    for t in range(n):
        out[t] = pos
        pos = pos + vel
        for d in range(2):
            if not lo <= pos[d] <= hi:
                vel[d] = -vel[d]
                pos[d] = np.clip(pos[d], lo, hi)
    return out


def render_video(label: int, cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames of one video of class ``label``, and which frames hide the object."""
    colour = np.array(list(COLOURS.values())[label % len(COLOURS)], float)
    shape = SHAPES[label // len(COLOURS)]
    n, s = int(rng.integers(cfg.min_frames, cfg.max_frames + 1)), cfg.size
    yy, xx = np.mgrid[0:s, 0:s].astype(float) + 0.5
    base = rng.uniform(70, 170)
    tilt = rng.uniform(-40, 40, 2)
    background = base + tilt[0] * (xx / s - 0.5) + tilt[1] * (yy / s - 0.5)
    background = background[..., None] + rng.normal(0, 12, (s, s, 1)) * np.array([1.0, 0.9, 1.1])

    r = rng.uniform(0.16, 0.26) * s
    path = _bouncing(rng, n, s, r)
    distractor_shape = SHAPES[rng.integers(len(SHAPES))] if rng.random() < 0.5 else None
    distractor_grey = np.clip(base + rng.choice([-1, 1]) * rng.uniform(50, 80), 0, 255)
    dr = rng.uniform(0.08, 0.14) * s
    dpath = _bouncing(rng, n, s, dr)
    hidden = np.zeros(n, bool)
    hidden[rng.permutation(n)[: int(rng.uniform(0, cfg.max_hidden) * n)]] = True
    jitter = rng.uniform(-25, 25, 3)

    frames = np.empty((n, s, s, 3), np.uint8)
    for t in range(n):
        img = background.copy()
        if distractor_shape is not None:
            img[_mask(distractor_shape, xx, yy, *dpath[t], dr)] = distractor_grey
        obj = _mask(shape, xx, yy, *path[t], r)
        if hidden[t]:  # a grey occluder covers the object and its surroundings
            occluder = np.maximum(np.abs(xx - path[t][0]), np.abs(yy - path[t][1])) <= 1.3 * r
            img[occluder] = base
        else:
            img[obj] = colour + jitter
        frames[t] = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return frames, hidden


def write_synthetic(
    out_dir: str, cfg: SynthConfig = SynthConfig(), source: Literal["videos", "frames"] = "videos",
    workers: int = 1, stream: TextIO | None = None,
) -> dict[str, BuildReport]:
    """Write the videos (or frame folders), ``train.txt``/``val.txt``/``classes.txt``, then convert them into
    ``out_dir/train.lmdb`` and ``out_dir/val.lmdb``. Returns the build report of each split."""
    names = class_names(cfg.num_classes)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "classes.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    reports = {}
    for split_id, (split, per_class) in enumerate((("train", cfg.train_per_class), ("val", cfg.val_per_class))):
        lines = []
        progress = Progress(per_class * len(names), f"generating {split} {source}", stream=stream)
        for label, name in enumerate(names):
            for k in range(per_class):
                rng = np.random.default_rng([cfg.seed, split_id, label, k])
                frames, _ = render_video(label, cfg, rng)
                rel = f"{source}/{split}/{name}/{name}_{k:04d}"
                target = os.path.join(out_dir, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if source == "videos":
                    write_video(target + ".mp4", frames, cfg.fps)
                    lines.append(f"{rel}.mp4 {label}")
                else:
                    os.makedirs(target, exist_ok=True)
                    for t, pixels in enumerate(frames, 1):
                        with open(os.path.join(target, f"{t:05d}.jpg"), "wb") as fh:
                            fh.write(encode_jpeg(pixels))
                    lines.append(f"{rel} 1 {len(frames)} {label}")
                progress.update()
        progress.close()
        list_file = os.path.join(out_dir, f"{split}.txt")
        with open(list_file, "w") as f:
            f.write("\n".join(lines) + "\n")
        classes = read_class_names(os.path.join(out_dir, "classes.txt"))
        db = os.path.join(out_dir, f"{split}.lmdb")
        common = dict(dataset="custom", split=split, workers=workers, stream=stream)
        if source == "videos":
            items = parse_video_list(list_file, out_dir, num_classes=len(classes))
            reports[split] = build_videos(db, items, classes, short_side=0, **common)
        else:
            items = parse_frame_list(list_file, out_dir, num_classes=len(classes))
            reports[split] = build_frames(db, items, classes, **common)
    return reports
