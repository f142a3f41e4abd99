"""The inputs of a conversion: TSN list files over frame folders, video list files, and class folders of
videos, parsed into :class:`SourceVideo` items. Every malformed line is named with its number, all at once,
before anything is converted (:class:`ListFileError`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from ..errors import VideoiqError
from .records import RESERVED_PREFIX

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
ListLayout = Literal["start_end", "count"]


class ListFileError(VideoiqError, ValueError):
    """A list file with malformed lines (every bad line is named, with its number)."""


@dataclass(frozen=True)
class SourceVideo:
    """One video to convert: its key in the database, where it is, its labels and which frames or seconds."""

    key: str
    path: str
    labels: tuple[int, ...]
    first: int = 1  # frame folders: number of the first frame file
    count: int = 0  # frame folders: number of frames
    span: tuple[float, float] | None = None  # video files: only this time span (seconds), e.g. one labelled segment


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


def _labels(fields: list[str], num_classes: int | None) -> tuple[tuple[int, ...], str]:
    """Class ids of a line's label fields, or why they are not (non-integer, negative or past the class count)."""
    try:
        labels = tuple(int(float(x)) for x in fields)
    except ValueError:
        return (), f"labels must be integers, got {' '.join(fields)!r}"
    top = num_classes - 1 if num_classes is not None else None
    bad = [x for x in labels if x < 0 or (top is not None and x > top)]
    if bad:
        return (), f"label(s) {bad} outside 0..{top if top is not None else 'N'}"
    return labels, ""


def finish_items(path: str, numbered: list[tuple[int, SourceVideo]], problems: list[tuple[int, str]],
                 what: str = "line") -> list[SourceVideo]:
    """The items of a list (or annotation) file once every problem is known: one :class:`ListFileError`
    naming each bad ``what`` (line, row, video id) with its number, or the items in file order."""
    seen: dict[str, int] = {}
    for n, it in numbered:
        if it.key.startswith(RESERVED_PREFIX) or not it.key:
            problems.append((n, f"video id {it.key!r} is empty or starts with the reserved '{RESERVED_PREFIX}'"))
        if it.key in seen:
            problems.append((n, f"video id {it.key!r} appears twice (first on {what} {seen[it.key]})"))
        seen.setdefault(it.key, n)
    if problems:
        named = [f"{what} {n}: {text}" for n, text in sorted(problems, key=lambda p: p[0])]
        more = f"\n  ... and {len(named) - 10} more" if len(named) > 10 else ""
        raise ListFileError(f"{path}: {len(named)} bad {what}(s):\n  " + "\n  ".join(named[:10]) + more)
    if not numbered:
        raise ListFileError(f"{path}: no videos listed")
    return [it for _, it in numbered]


def parse_frame_list(
    path: str, frames_root: str, separator: str = " ", layout: ListLayout = "start_end", num_classes: int | None = None,
) -> list[SourceVideo]:
    """Videos of a TSN list file over frame folders under ``frames_root``.

    ``start_end`` (the original's): ``folder start end label [label ...]``, frames numbered start..end.
    ``count``: ``folder num_frames label [label ...]``, frames numbered 1..num_frames.
    """
    min_fields = 4 if layout == "start_end" else 3
    numbered: list[tuple[int, SourceVideo]] = []
    problems: list[tuple[int, str]] = []
    for n, line in _read_lines(path):
        parts = [p for p in line.split(separator) if p != ""]
        if len(parts) < min_fields:
            problems.append((n, f"expected {min_fields}+ fields separated by {separator!r} ({layout}), got {line!r}"))
            continue
        try:
            first, count = (int(parts[1]), int(parts[2]) - int(parts[1]) + 1) if layout == "start_end" else (
                1, int(parts[1]))
        except ValueError:
            problems.append((n, f"frame numbers must be integers, got {line!r}"))
            continue
        labels, why = _labels(parts[min_fields - 1:], num_classes)
        if why:
            problems.append((n, why))
        elif count < 1:
            problems.append((n, f"no frames ({line!r})"))
        else:
            numbered.append((n, SourceVideo(_key_of(parts[0]), os.path.join(frames_root, parts[0]), labels,
                                            first, count)))
    return finish_items(path, numbered, problems)


def parse_video_list(path: str, videos_root: str, separator: str = " ",
                     num_classes: int | None = None) -> list[SourceVideo]:
    """Videos of a list file ``relative/video.mp4 label [label ...]`` under ``videos_root`` (also the FCVID
    and Mini-Sports1M lists of video files)."""
    numbered: list[tuple[int, SourceVideo]] = []
    problems: list[tuple[int, str]] = []
    for n, line in _read_lines(path):
        parts = [p for p in line.split(separator) if p != ""]
        if len(parts) < 2:
            problems.append((n, f"expected 'video label [label ...]' separated by {separator!r}, got {line!r}"))
            continue
        labels, why = _labels(parts[1:], num_classes)
        if why:
            problems.append((n, why))
        else:
            numbered.append((n, SourceVideo(_key_of(parts[0]), os.path.join(videos_root, parts[0]), labels)))
    return finish_items(path, numbered, problems)


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
