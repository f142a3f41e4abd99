"""Per-frame decisions as a picture: a strip of each video's sampled frames with the action under each.

:func:`decision_strip` draws one row per video (its title above: the label and the prediction), the
frames in order, and under each frame its action in a colour of its own (skips grey, low widths light,
high widths dark). It only draws: ``videoiq predict --strip out.png`` draws the videos it scored, and
:mod:`videoiq.train.pictures` the validation videos of a policy stage or eval (logged to wandb).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .flops import is_skip

CELL = 64  # frames are scaled to this side (nearest neighbour: small frames stay sharp)
LABEL_H = 14
TITLE_H = 14
GAP = 4


def action_colour(action: str) -> tuple[int, int, int]:
    """The label colour of an action: grey for skips, deeper blue the more bits a width has."""
    if is_skip(action):
        return (150, 150, 150)
    bits = 32 if action == "fp" else int(action.removesuffix("bit"))
    depth = min(np.log2(max(bits, 1)) / 5.0, 1.0)  # 1 bit -> 0, 32 bits -> 1
    return (int(200 - 170 * depth), int(225 - 160 * depth), 255)


def decision_strip(videos: Sequence[np.ndarray], actions: Sequence[Sequence[str]],
                   titles: Sequence[str]) -> Image.Image:
    """One row per video: ``videos[i]`` is ``(T, H, W, 3)`` uint8, ``actions[i]`` its T action names."""
    if not (len(videos) == len(actions) == len(titles)) or not videos:
        raise ValueError(f"need as many videos, action lists and titles (got {len(videos)}, {len(actions)}, "
                         f"{len(titles)}), and at least one")
    for i, (v, a) in enumerate(zip(videos, actions, strict=True)):
        if v.ndim != 4 or v.shape[-1] != 3 or len(a) != len(v):
            raise ValueError(f"video {i}: expected (T, H, W, 3) frames and one action per frame, got "
                             f"{tuple(v.shape)} and {len(a)} actions")
    columns = max(len(v) for v in videos)
    row_h = TITLE_H + CELL + LABEL_H + GAP
    image = Image.new("RGB", (columns * (CELL + GAP) + GAP, len(videos) * row_h + GAP), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for r, (frames, acts, title) in enumerate(zip(videos, actions, titles, strict=True)):
        top = GAP + r * row_h
        draw.text((GAP, top), title, fill=(0, 0, 0), font=font)
        for c, (frame, action) in enumerate(zip(frames, acts, strict=True)):
            x = GAP + c * (CELL + GAP)
            image.paste(Image.fromarray(frame).resize((CELL, CELL), Image.NEAREST), (x, top + TITLE_H))
            box = (x, top + TITLE_H + CELL, x + CELL - 1, top + TITLE_H + CELL + LABEL_H - 1)
            draw.rectangle(box, fill=action_colour(action))
            if is_skip(action):  # a skipped frame never ran: grey it out
                shade = Image.new("RGB", (CELL, CELL), (255, 255, 255))
                cell = image.crop((x, top + TITLE_H, x + CELL, top + TITLE_H + CELL))
                image.paste(Image.blend(cell, shade, 0.6), (x, top + TITLE_H))
            draw.text((x + 3, box[1] + 1), action, fill=(0, 0, 0), font=font)
    return image


def save_strip(image: Image.Image, path: str | os.PathLike) -> str:
    """Write the strip as PNG (the folder is created); returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    image.save(path, format="PNG")
    return path
