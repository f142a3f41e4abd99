"""``videoiq data build``'s conversions from their options: the list or annotation file parsed, the class names
checked against the dataset, the size estimated, then :mod:`.build` writes one database, or
:mod:`.shard_build` a sharded split (``--shards``: in local processes, or Ray tasks with ``--ray``)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UsageError
from . import annotations, build, lists, shard_build
from .lists import read_class_names
from .specs import dataset_spec


def _class_names(args: Any) -> list[str] | None:
    """The names of --classes, read before the list so that its parser can name out-of-range lines."""
    return read_class_names(args.classes) if args.classes else None


def _checked_classes(args: Any, names: list[str] | None, items_labels: list[tuple[int, ...]],
                     source: str | None = None) -> list[str]:
    """Names from --classes (or an annotation file's ``source``), else ``0..max label``; checked against a named
    dataset's class count."""
    if names is None:
        names = [str(c) for c in range(1 + max((x for labels in items_labels for x in labels), default=-1))]
    expected = dataset_spec(args.dataset).num_classes
    if expected is not None and len(names) != expected:
        source = args.classes or source or "the largest label in the list"
        raise UsageError(f"{source}: {len(names)} classes, but {args.dataset} has {expected}")
    return names


def _write(args: Any, items: list, classes: list[str], conversion: build.Conversion, common: dict[str, Any],
           missing: list[tuple[str, str]] | None = None) -> build.BuildReport:
    """One LMDB, or with ``--shards`` a sharded split built by local processes or (``--ray``) Ray tasks."""
    if getattr(args, "ray", False) and not args.shards:
        raise UsageError("--ray builds shards: give --shards N too")
    if not args.shards:
        return build.write_database(args.out, items, classes, conversion, missing=missing, **common)
    workers = common.pop("workers")
    if args.ray:
        from ..ray.build import ray_runner

        runner, where = ray_runner(), "as Ray tasks"
    else:
        runner, where = shard_build.local_runner(workers), f"in {workers} processes"
    return shard_build.build_sharded(args.out, items, classes, conversion, args.shards, runner, missing=missing,
                                     where=where, **common)


def build_from_options(source: str, args: Any, printer: Callable[[str], None] = print) -> build.BuildReport:
    """Convert ``source`` (``frames``, ``videos``, ``activitynet`` or ``kinetics``) with the options of its
    ``videoiq data build`` command (``args``: the parsed flags, by their names); prints the size estimate and
    the report, and returns the report."""
    spec = dataset_spec(args.dataset)
    sep = args.sep if getattr(args, "sep", None) is not None else spec.separator
    common = dict(dataset=args.dataset, split=args.split or getattr(args, "subset", None) or "", workers=args.workers,
                  strict=args.strict, overwrite=args.overwrite, map_size=int(args.map_size_gib * (1 << 30)))
    names = _class_names(args)
    limit = len(names) if names is not None else spec.num_classes
    if source == "frames":
        items = lists.parse_frame_list(args.list, args.root, sep, args.layout, num_classes=limit)
        classes = _checked_classes(args, names, [it.labels for it in items])
        conversion = build.frames_conversion(args.template or spec.frame_template, verify=not args.no_verify)
        report = _write(args, items, classes, conversion, common)
        printer(report.summary())
        return report
    seconds, missing = None, []
    if source == "videos" and args.list:
        items = lists.parse_video_list(args.list, args.root, sep, num_classes=limit)
        classes = _checked_classes(args, names, [it.labels for it in items])
    elif source == "videos":
        items, classes = lists.scan_video_folders(args.root)
    else:
        if source == "activitynet":
            annotation_file = args.json
            found = annotations.parse_activitynet(args.json, args.root, args.subset, args.trim, names)
        else:
            annotation_file = args.csv
            found = annotations.parse_kinetics_csv(args.csv, args.root, args.subset, names)
        items, seconds, missing = found.items, found.seconds, found.missing
        classes = _checked_classes(args, found.classes, [], source=f"the labels of {annotation_file}")
    fps = args.fps if args.fps > 0 else None
    if items:
        estimate = build.estimate_size(items, seconds, fps, args.short_side, args.quality)
        if estimate is not None:
            printer(estimate.describe(args.short_side, args.quality))
    conversion = build.videos_conversion(fps, args.short_side, args.quality, args.max_loss, args.strict)
    report = _write(args, items, classes, conversion, common, missing)
    printer(report.summary())
    return report
