"""The annotation files two of the paper's datasets ship in, parsed into :class:`~videoiq.data.lists.SourceVideo`
items for the one video converter (``build.build_videos``): ActivityNet v1.3 JSON and Kinetics CSV.

Each parser names every malformed entry or row at once (:class:`~videoiq.data.lists.ListFileError`), finds
the video files under a root folder by id, whatever their extension and sub-folder, and returns the videos
it found no file for separately, so that the build lists them as skipped instead of failing. FCVID and
Mini-Sports1M come as the original's frame lists or as ``video label`` lists, which ``lists.py`` reads.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .lists import VIDEO_EXTENSIONS, ListFileError, SourceVideo, finish_items

ACTIVITYNET_SUBSETS = ("training", "validation")  # "testing" has no annotations to learn or score from
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


@dataclass
class Annotated:
    """Videos to convert, their class names, the ones with no file (``(key, reason)``), and how many seconds
    each item is said to last (None where the annotation does not say), for the size estimate."""

    items: list[SourceVideo]
    classes: list[str]
    missing: list[tuple[str, str]] = field(default_factory=list)
    seconds: list[float | None] = field(default_factory=list)


def index_videos(root: str) -> dict[str, list[str]]:
    """Every video file under ``root`` (recursively) by file name without extension: stem -> paths."""
    if not os.path.isdir(root):
        raise ListFileError(f"{root}: no such directory")
    found: dict[str, list[str]] = {}
    for folder, _, files in os.walk(root):
        for f in sorted(files):
            stem, ext = os.path.splitext(f)
            if ext.lower() in VIDEO_EXTENSIONS:
                found.setdefault(stem, []).append(os.path.join(folder, f))
    return found


def _find(index: dict[str, list[str]], stems: list[str], prefer_folder: str = "") -> tuple[str, str] | None:
    """The first of ``stems`` with a file (one inside ``prefer_folder`` when several), as (stem, path)."""
    for stem in stems:
        paths = index.get(stem)
        if paths:
            inside = [p for p in paths if os.path.basename(os.path.dirname(p)) == prefer_folder]
            return stem, (inside or paths)[0]
    return None


# --------------------------------------------------------------------------------------------------
# ActivityNet v1.3


def activitynet_classes(data: dict[str, Any]) -> list[str]:
    """The class names of an ActivityNet JSON: the taxonomy's leaf nodes (the 200 activities of v1.3), else
    every label of every subset; sorted, so that the training and validation databases agree on ids."""
    taxonomy = data.get("taxonomy") or []
    parents = {node.get("parentName") for node in taxonomy}
    leaves = sorted({node["nodeName"] for node in taxonomy if "nodeName" in node and node["nodeName"] not in parents})
    if leaves:
        return leaves
    return sorted({a.get("label") for v in data["database"].values() if isinstance(v, dict)
                   for a in v.get("annotations") or [] if isinstance(a, dict) and isinstance(a.get("label"), str)})


def parse_activitynet(path: str, root: str, subset: str, trim: bool = False,
                      classes: list[str] | None = None) -> Annotated:
    """The videos of one ``subset`` of an ActivityNet v1.3 JSON, found in ``root`` as ``v_<id>.<ext>`` or
    ``<id>.<ext>``: whole untrimmed videos labelled with every distinct activity they show (multi-label), or
    with ``trim`` one item per labelled segment, decoded over that segment only (key ``<id>/<n>``)."""
    if subset not in ACTIVITYNET_SUBSETS:
        raise ListFileError(f"subset {subset!r}: expected one of {', '.join(ACTIVITYNET_SUBSETS)}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ListFileError(f"{path}: cannot read the annotation file ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ListFileError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise ListFileError(f"{path}: expected an ActivityNet JSON object with a 'database' of videos by id")
    entries = [(n, vid, video) for n, (vid, video) in enumerate(data["database"].items(), 1)
               if isinstance(video, dict) and video.get("subset") == subset]
    if not entries:  # said before the root is searched (a walk over a large video folder)
        raise ListFileError(f"{path}: no videos in subset {subset!r}")
    names = activitynet_classes(data) if classes is None else classes
    ids = {name: i for i, name in enumerate(names)}
    index = index_videos(root)
    numbered: list[tuple[int, SourceVideo]] = []
    problems: list[tuple[int, str]] = []
    out = Annotated([], names)
    for n, vid, video in entries:
        segments, why = _activitynet_segments(video, ids)
        if why:
            problems.append((n, f"video {vid!r}: {why}"))
            continue
        found = _find(index, [f"v_{vid}", vid])
        if trim:
            items = [(SourceVideo(f"{vid}/{k:03d}", found[1] if found else "", (label,), span=(t0, t1)), t1 - t0)
                     for k, (t0, t1, label) in enumerate(segments)]
        else:
            labels = tuple(sorted({label for _, _, label in segments}))
            duration = video.get("duration")
            items = [(SourceVideo(vid, found[1] if found else "", labels),
                      float(duration) if isinstance(duration, (int, float)) else None)]
        for item, seconds in items:
            if found is None:
                out.missing.append((item.key, f"no video file v_{vid}.* or {vid}.* under {root}"))
            else:
                numbered.append((n, item))
                out.seconds.append(seconds)
    out.items = finish_items(path, numbered, problems, what="entry") if numbered or problems else []
    return out


def _activitynet_segments(video: dict[str, Any], ids: dict[str, int]) -> tuple[list[tuple[float, float, int]], str]:
    """(start, end, class id) of each annotation of one video, or why they are malformed."""
    annotations = video.get("annotations")
    if not isinstance(annotations, list) or not annotations:
        return [], "no 'annotations' (expected a list of {'segment': [start, end], 'label': name})"
    segments = []
    for k, a in enumerate(annotations):
        seg = a.get("segment") if isinstance(a, dict) else None
        if not (isinstance(seg, list) and len(seg) == 2 and all(isinstance(t, (int, float)) for t in seg)):
            return [], f"annotation {k}: 'segment' must be [start, end] in seconds, got {seg!r}"
        if not seg[1] > seg[0] >= 0:
            return [], f"annotation {k}: segment {seg} does not run forward from >= 0 s"
        label = a.get("label")
        if label not in ids:
            return [], f"annotation {k}: label {label!r} is not one of the {len(ids)} classes"
        segments.append((float(seg[0]), float(seg[1]), ids[label]))
    return segments, ""


# --------------------------------------------------------------------------------------------------
# Kinetics


def parse_kinetics_csv(path: str, root: str, split: str | None = None,
                       classes: list[str] | None = None) -> Annotated:
    """The clips of a Kinetics CSV (``label,youtube_id,time_start,time_end[,split]`` with a header row), rows of
    ``split`` only when given. A clip is found in ``root`` (flat or in a folder per label) as
    ``<youtube_id>_<start:06d>_<end:06d>.<ext>``, the downloaders' name, or as the whole ``<youtube_id>.<ext>``,
    then decoded from ``time_start`` to ``time_end`` only. Class names: the labels present, sorted."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing_columns = [c for c in KINETICS_COLUMNS if c not in (reader.fieldnames or [])]
            if missing_columns:
                raise ListFileError(f"{path}: the header row lacks {', '.join(missing_columns)} (expected "
                                    f"{','.join(KINETICS_COLUMNS)}[,split]; got {reader.fieldnames})")
            if split is not None and "split" not in reader.fieldnames:
                raise ListFileError(f"{path}: no 'split' column to select {split!r} from")
            rows = [(reader.line_num, row) for row in reader if split is None or row.get("split") == split]
    except OSError as e:
        raise ListFileError(f"{path}: cannot read the annotation file ({e.strerror})") from None
    if not rows:  # said before the root is searched (a walk over a large video folder)
        raise ListFileError(f"{path}: no clips" + (f" in split {split!r}" if split is not None else ""))
    names = sorted({row["label"] for _, row in rows if row.get("label")}) if classes is None else classes
    ids = {name: i for i, name in enumerate(names)}
    index = index_videos(root)
    numbered: list[tuple[int, SourceVideo]] = []
    problems: list[tuple[int, str]] = []
    out = Annotated([], names)
    for n, row in rows:
        label, ytid = row.get("label") or "", row.get("youtube_id") or ""
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
        except (TypeError, ValueError):
            problems.append((n, f"time_start and time_end must be seconds, got {row.get('time_start')!r}, "
                                f"{row.get('time_end')!r}"))
            continue
        if not ytid or end <= start or label not in ids:
            why = ("no youtube_id" if not ytid else f"time_end {end} is not after time_start {start}"
                   if end <= start else f"label {label!r} is not one of the {len(ids)} classes")
            problems.append((n, why))
            continue
        clip = f"{ytid}_{start:06d}_{end:06d}"
        found = _find(index, [clip, ytid], prefer_folder=label)
        if found is None:
            out.missing.append((clip, f"no video file {clip}.* or {ytid}.* under {root}"))
            continue
        span = (float(start), float(end)) if found[0] == ytid else None  # a whole video: only the clip's seconds
        numbered.append((n, SourceVideo(clip, found[1], (ids[label],), span=span)))
        out.seconds.append(float(end - start))
    out.items = finish_items(path, numbered, problems) if numbered or problems else []
    return out
