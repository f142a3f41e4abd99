"""The inputs of a conversion: TSN list files over frame folders, video list files, and class folders of
videos, parsed into :class:`SourceVideo` items. Every malformed line is named with its number, all at once,
before anything is converted (:class:`ListFileError`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from .records import RESERVED_PREFIX

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
ListLayout = Literal["start_end", "count"]


class ListFileError(ValueError):
    """A list file with malformed lines (every bad line is named, with its number)."""


@dataclass(frozen=True)
class SourceVideo:
    """One video to convert: its key in the database, where it is, its labels and (frames) which frames."""

    key: str
    path: str
    labels: tuple[int, ...]
    first: int = 1  # frame folders: number of the first frame file
    count: int = 0  # frame folders: number of frames


def read_class_names(path: str) -> list[str]:
    """One class name per line, in label-id order (the original's ``categories.txt``)."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [ln.strip() for ln in f if ln.strip()]
    except OSError as e:
        raise ListFileError(f"{path}: cannot read the class names ({e.strerror})") from None
    if len(set(names)) != len(names):
        raise ListFileError(f"{path}: class names repeat")
    return names


def _read_lines(path: str) -> list[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [(n, ln.strip()) for n, ln in enumerate(f, 1) if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as e:
        raise ListFileError(f"{path}: cannot read the list file ({e.strerror})") from None


def _key_of(rel: str) -> str:
    key = rel.replace(os.sep, "/").strip("/")
    for ext in VIDEO_EXTENSIONS:
        if key.lower().endswith(ext):
            return key[: -len(ext)]
    return key


def _finish_list(path: str, items: list[SourceVideo], problems: list[str],
                 num_classes: int | None) -> list[SourceVideo]:
    seen: dict[str, int] = {}
    for it in items:
        if it.key.startswith(RESERVED_PREFIX) or not it.key:
            problems.append(f"video id {it.key!r} is empty or starts with the reserved '{RESERVED_PREFIX}'")
        if it.key in seen:
            problems.append(f"video id {it.key!r} appears twice")
        seen[it.key] = 1
        if num_classes is not None and any(not 0 <= x < num_classes for x in it.labels):
            problems.append(f"{it.key}: label(s) {list(it.labels)} outside 0..{num_classes - 1}")
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ListFileError(f"{path}: {len(problems)} bad line(s):\n  " + "\n  ".join(problems[:10]) + more)
    if not items:
        raise ListFileError(f"{path}: no videos listed")
    return items


def parse_frame_list(
    path: str, frames_root: str, separator: str = " ", layout: ListLayout = "start_end", num_classes: int | None = None,
) -> list[SourceVideo]:
    """Videos of a TSN list file over frame folders under ``frames_root``.

    ``start_end`` (the original's): ``folder start end label [label ...]``, frames numbered start..end.
    ``count``: ``folder num_frames label [label ...]``, frames numbered 1..num_frames.
    """
    min_fields = 4 if layout == "start_end" else 3
    items, problems = [], []
    for n, line in _read_lines(path):
        parts = [p for p in line.split(separator) if p != ""]
        if len(parts) < min_fields:
            problems.append(f"line {n}: expected {min_fields}+ fields separated by {separator!r} ({layout}), "
                            f"got {line!r}")
            continue
        try:
            if layout == "start_end":
                first, last = int(parts[1]), int(parts[2])
                count, labels = last - first + 1, tuple(int(float(x)) for x in parts[3:])
            else:
                first, count, labels = 1, int(parts[1]), tuple(int(float(x)) for x in parts[2:])
        except ValueError:
            problems.append(f"line {n}: frame numbers and labels must be integers, got {line!r}")
            continue
        if count < 1:
            problems.append(f"line {n}: no frames ({line!r})")
            continue
        items.append(SourceVideo(_key_of(parts[0]), os.path.join(frames_root, parts[0]), labels, first, count))
    return _finish_list(path, items, problems, num_classes)


def parse_video_list(path: str, videos_root: str, separator: str = " ",
                     num_classes: int | None = None) -> list[SourceVideo]:
    """Videos of a list file ``relative/video.mp4 label [label ...]`` under ``videos_root``."""
    items, problems = [], []
    for n, line in _read_lines(path):
        parts = [p for p in line.split(separator) if p != ""]
        if len(parts) < 2:
            problems.append(f"line {n}: expected 'video label [label ...]' separated by {separator!r}, got {line!r}")
            continue
        try:
            labels = tuple(int(float(x)) for x in parts[1:])
        except ValueError:
            problems.append(f"line {n}: labels must be integers, got {line!r}")
            continue
        items.append(SourceVideo(_key_of(parts[0]), os.path.join(videos_root, parts[0]), labels))
    return _finish_list(path, items, problems, num_classes)


def scan_video_folders(root: str) -> tuple[list[SourceVideo], list[str]]:
    """Videos laid out as ``root/<class name>/<video>.<ext>``; classes sorted by name."""
    if not os.path.isdir(root):
        raise ListFileError(f"{root}: no such directory")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    items = []
    for label, name in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, name))):
            if f.lower().endswith(VIDEO_EXTENSIONS):
                items.append(SourceVideo(_key_of(f"{name}/{f}"), os.path.join(root, name, f), (label,)))
    if not items:
        raise ListFileError(f"{root}: no {'/'.join(VIDEO_EXTENSIONS)} files in class sub-folders")
    return items, classes
