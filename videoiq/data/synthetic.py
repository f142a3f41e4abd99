"""A generated video classification set for the demo and the tests, built so that precision matters per frame.

A class is a colour and a mark (``red_cyan``, ``red_magenta``, ``blue_cyan``, ...). A video is a run of
shots of equal length (a clip's segments each fall in one shot), and every shot is one of these kinds:

* ``blank``: a plain grey frame, as between scenes. It says nothing about the class, and a 16-px glance
  tells it apart: a policy should skip it.
* ``colour``: the object, a large disc of the class's colour moving over shaded clutter with a grey
  distractor. Any width of the any-precision model reads the colour; the mark cannot be seen.
* ``mark`` and ``faint``: a dark close-up with a disc of the class's mark colour (cyan or magenta), lit
  at a level drawn per video. Where it is lit brightly (``mark``), low precision reads it too; where it
  is faint (``faint``: under ``faint_below`` of ``mark_level``), it is a difference of a few grey levels
  on a black background, which coarse activations (2 bits keep 4 levels) lose first. The colour cannot
  be seen.

So every video needs a colour frame and a mark frame to be classified, its blank frames are best
skipped, and its close-ups cost more precision when they are faint. Which kind each frame is goes to
``<split>.frame_kinds.json`` (``videoiq.data.frame_kinds``), so evaluation reports a model's accuracy
and a policy's choices per kind.

Videos are written as real files (mp4 with libx264, or JPEG frame folders) plus list files and
``classes.txt``, and then converted with the same converters users run on their own data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, TextIO

import numpy as np

from ..errors import UsageError
from ..progress import Progress
from .build import BuildReport, build_frames, build_videos
from .codec import encode_jpeg, write_video
from .frame_kinds import FrameKinds, frame_kinds_path
from .lists import parse_frame_list, parse_video_list, read_class_names

COLOURS = {"red": (215, 45, 40), "blue": (40, 85, 220), "green": (45, 175, 60), "yellow": (225, 200, 40)}
MARKS = {"cyan": (0.0, 1.0, 1.0), "magenta": (1.0, 0.0, 1.0)}
MAX_CLASSES = len(COLOURS) * len(MARKS)
KINDS = ("blank", "colour", "mark", "faint")
BLANK, COLOUR, MARK, FAINT = range(len(KINDS))


@dataclass(frozen=True)
class SynthConfig:
    """Size and difficulty of the generated set."""

    num_classes: int = 8
    train_per_class: int = 40
    val_per_class: int = 40
    min_frames: int = 24
    max_frames: int = 40
    size: int = 48
    fps: int = 8
    shots: int = 8  # shots per video, each of one kind (the demo samples 8 frames: one per shot)
    mark_shots: int = 1  # close-up shots per video
    max_blank: float = 0.5  # at most this share of a video's shots is blank
    mark_level: float = 40.0  # the brightest a mark is lit, in grey levels over the black close-up
    min_light: float = 0.15  # the dimmest a video's marks are lit, as a share of mark_level
    faint_below: float = 0.4  # marks lit under this share of mark_level are "faint"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise UsageError(f"num_classes must lie in [2, {MAX_CLASSES}], got {self.num_classes}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise UsageError(f"need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if self.size < 16 or self.size % 2:
            raise UsageError(f"size must be even and >= 16, got {self.size}")
        if self.train_per_class < 1 or self.val_per_class < 1:
            raise UsageError("train_per_class and val_per_class must be >= 1")
        if not 2 <= self.shots <= self.min_frames:
            raise UsageError(f"shots must lie in [2, min_frames={self.min_frames}], got {self.shots}")
        if not 1 <= self.mark_shots <= self.shots - 1:
            raise UsageError(f"mark_shots must lie in [1, shots - 1 = {self.shots - 1}], got {self.mark_shots}")
        if not 0.0 <= self.max_blank < 1.0:
            raise UsageError(f"max_blank must lie in [0, 1), got {self.max_blank}")
        if not 0 < self.mark_level <= 255 or not 0 < self.faint_below <= 1 or not 0 < self.min_light <= 1:
            raise UsageError(f"need 0 < mark_level <= 255 and 0 < min_light, faint_below <= 1; got {self.mark_level}, "
                             f"{self.min_light}, {self.faint_below}")


def class_names(num_classes: int) -> list[str]:
    """``colour_mark`` names, the mark cycling fastest: 8 classes are 4 colours x (cyan, magenta)."""
    return [f"{c}_{m}" for c in COLOURS for m in MARKS][:num_classes]


def frame_kinds(num_classes: int, videos: dict[str, str]) -> FrameKinds:
    """What each kind of frame shows: nothing, the colour (classes of one colour look alike), the mark."""
    colour = tuple(c // len(MARKS) for c in range(num_classes))
    mark = tuple(c % len(MARKS) for c in range(num_classes))
    return FrameKinds(KINDS, (None, colour, mark, mark), videos)


def _disc(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


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


def shot_kinds(rng: np.random.Generator, n: int, cfg: SynthConfig) -> np.ndarray:
    """The shot kind (blank, colour or mark) of each of a video's ``n`` frames: ``cfg.shots`` shots of
    (nearly) equal length in random order, ``mark_shots`` close-ups, up to ``max_blank`` of the shots blank
    and at least one colour shot."""
    blank = min(int(rng.integers(0, int(cfg.max_blank * cfg.shots) + 1)), cfg.shots - cfg.mark_shots - 1)
    colour = cfg.shots - blank - cfg.mark_shots
    kinds = rng.permutation([BLANK] * blank + [COLOUR] * colour + [MARK] * cfg.mark_shots)
    bounds = np.round(np.arange(cfg.shots + 1) * n / cfg.shots).astype(int)
    return np.repeat(kinds, np.diff(bounds))


def render_video(label: int, cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames of one video of class ``label``, and each frame's kind."""
    colour = np.array(list(COLOURS.values())[label // len(MARKS)], float)
    mark = np.array(list(MARKS.values())[label % len(MARKS)])
    n, s = int(rng.integers(cfg.min_frames, cfg.max_frames + 1)), cfg.size
    n -= n % cfg.shots  # whole shots, so that every segment of a sampled clip lies in one shot
    kinds = shot_kinds(rng, n, cfg)
    yy, xx = np.mgrid[0:s, 0:s].astype(float) + 0.5

    # colour shots: one object moving over shaded clutter, with a grey distractor
    base = rng.uniform(70, 170)
    tilt = rng.uniform(-40, 40, 2)
    background = base + tilt[0] * (xx / s - 0.5) + tilt[1] * (yy / s - 0.5)
    background = background[..., None] + rng.normal(0, 12, (s, s, 1)) * np.array([1.0, 0.9, 1.1])
    r = rng.uniform(0.2, 0.3) * s
    path = _bouncing(rng, n, s, r)
    dr = rng.uniform(0.08, 0.14) * s
    dpath = _bouncing(rng, n, s, dr)
    distractor_grey = np.clip(base + rng.choice([-1, 1]) * rng.uniform(50, 80), 0, 255)
    jitter = rng.uniform(-25, 25, 3)
    # close-ups: one lighting level per video, so a video's marks are all faint or all clear
    light = rng.uniform(cfg.min_light, 1.0)
    if light < cfg.faint_below:
        kinds[kinds == MARK] = FAINT

    frames = np.empty((n, s, s, 3), np.uint8)
    close_up = None
    for t in range(n):
        if kinds[t] == BLANK:
            img = np.full((s, s, 3), rng.uniform(100, 180)) + rng.normal(0, 3, (s, s, 3))
        elif kinds[t] == COLOUR:
            img = background.copy()
            img[_disc(xx, yy, *dpath[t], dr)] = distractor_grey
            img[_disc(xx, yy, *path[t], r)] = colour + jitter
            img = img + rng.normal(0, 6, img.shape)
        else:
            if close_up is None or kinds[t - 1] != kinds[t]:  # a new close-up shot: a new place for the disc
                close_up = np.full((s, s, 3), rng.uniform(2, 8))
                cr = rng.uniform(0.2, 0.3) * s
                close_up[_disc(xx, yy, *rng.uniform(cr, s - cr, 2), cr)] += light * cfg.mark_level * mark
            img = close_up + rng.normal(0, 1.5, (s, s, 1))
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames, kinds


def write_synthetic(
    out_dir: str, cfg: SynthConfig = SynthConfig(), source: Literal["videos", "frames"] = "videos",
    workers: int = 1, stream: TextIO | None = None,
) -> dict[str, BuildReport]:
    """Write the videos (or frame folders), ``train.txt``/``val.txt``/``classes.txt`` and each split's frame
    kinds, then convert them into ``out_dir/train.lmdb`` and ``out_dir/val.lmdb``. Returns the build report
    of each split."""
    names = class_names(cfg.num_classes)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "classes.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    reports = {}
    for split_id, (split, per_class) in enumerate((("train", cfg.train_per_class), ("val", cfg.val_per_class))):
        lines, kinds = [], {}
        progress = Progress(per_class * len(names), f"generating {split} {source}", stream=stream)
        for label, name in enumerate(names):
            for k in range(per_class):
                rng = np.random.default_rng([cfg.seed, split_id, label, k])
                frames, frame_kind = render_video(label, cfg, rng)
                rel = f"{source}/{split}/{name}/{name}_{k:04d}"
                kinds[rel] = "".join(str(int(x)) for x in frame_kind)
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
        with open(frame_kinds_path(out_dir, split), "w") as f:
            f.write(frame_kinds(len(names), kinds).to_json())
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
