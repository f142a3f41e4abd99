"""Building a sharded split (see ``shards.py``): the plan, one shard per job, the merge into a manifest.

``videoiq data build ... --shards N`` deals the inputs, in list order, into N shards and writes
``build.json`` (the settings and each shard's keys) before any shard. Every shard is one job:
:func:`build_shard` converts its inputs with :func:`.build.write_database` into a temporary folder
(``.shard-00003.lmdb.partial-<id>``) and renames it into place when it is complete, so a killed job leaves
no half shard and a shard that exists is whole. Jobs run in local processes (:func:`local_runner`) or as
Ray tasks over a cluster (``videoiq.ray.build``); the driver only collects their reports. Once every shard
is there, the driver merges their indexes into ``index.msgpack`` and writes ``manifest.json`` (both through a
temporary file and a rename), which is what makes the folder a readable split.

Re-running the same command keeps the finished shards and redoes the rest; videos added to the list go
into new shards (of at most the planned shard size) and the other shards stay as they are. A folder built
with other settings, a list that lost some of its videos, a shard of another build or a damaged one, and a
second build writing into the same folder at the same time are each refused with one message naming it.
The output folder must be one path that every process writing a shard and the driver see (shared storage);
the shards can be spread over node-local disks afterwards (``docs/ray.md``).
"""
from __future__ import annotations

import concurrent.futures as cf
import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import msgpack

from ..atomic import FolderLock, write_bytes_atomic
from ..progress import Progress
from .build import (
    DEFAULT_MAP_SIZE,
    BuildError,
    BuildReport,
    Conversion,
    check_labels,
    check_same_settings,
    split_meta,
    write_database,
)
from .codec import DecodeCheck
from .lists import SourceVideo
from .records import DatabaseError, VideoDB, forget
from .shards import (
    BUILD_PLAN,
    INDEX_FILE,
    MANIFEST,
    SHARDS_FORMAT,
    SHARDS_VERSION,
    manifest_digest,
    shard_name,
)

LOCK_FILE = ".build.lock"
PARTIAL = ".partial-"


@dataclass(frozen=True)
class ShardJob:
    """Everything one shard's conversion needs (shipped to a process or a Ray task)."""

    out: str
    name: str
    items: tuple[SourceVideo, ...]
    classes: tuple[str, ...]
    conversion: Conversion
    dataset: str
    split: str
    strict: bool
    map_size: int

    @property
    def path(self) -> str:
        return os.path.join(self.out, self.name)


@dataclass
class ShardResult:
    """What one job did: the shard's report (``meta`` empty when none of its inputs converted) and where it ran."""

    name: str
    report: BuildReport
    host: str = ""


ShardRunner = Callable[[list[ShardJob]], Iterator[ShardResult]]


def build_shard(job: ShardJob) -> ShardResult:
    """Convert one shard's inputs into a temporary folder and rename it into place (a no-op if it is there)."""
    host = socket.gethostname()
    if os.path.isfile(os.path.join(job.path, "data.mdb")):  # a retried job whose first attempt finished
        return ShardResult(job.name, _present_report(job), host)
    tmp = os.path.join(job.out, f".{job.name}{PARTIAL}{uuid.uuid4().hex[:8]}")
    try:
        with open(os.devnull, "w") as quiet:  # the driver prints one progress line for all shards
            report = write_database(tmp, list(job.items), list(job.classes), job.conversion, dataset=job.dataset,
                                    split=job.split, strict=job.strict, map_size=job.map_size,
                                    require_videos=False, stream=quiet)
        if not report.meta:
            shutil.rmtree(tmp)
        else:
            try:
                os.rename(tmp, job.path)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                shutil.rmtree(tmp)  # another attempt finished first; its shard is the same
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.path = job.path
    return ShardResult(job.name, report, host)


def _present_report(job: ShardJob) -> BuildReport:
    db = VideoDB(job.path)
    forget(job.path)
    return BuildReport(job.path, len(job.items), already_present=len(db), meta=db.meta)


def local_runner(workers: int) -> ShardRunner:
    """Run shard jobs in ``workers`` local processes (in this one when ``workers`` <= 1), as they finish."""

    def run(jobs: list[ShardJob]) -> Iterator[ShardResult]:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield build_shard(job)
            return
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
            for future in cf.as_completed([pool.submit(build_shard, job) for job in jobs]):
                yield future.result()

    return run


@dataclass
class _Plan:
    """``build.json``: the build's settings and every shard's keys, in list order."""

    settings: dict[str, Any]
    shards: list[dict[str, Any]] = field(default_factory=list)  # {"name", "keys"}


def build_sharded(out: str, items: list[SourceVideo], classes: list[str], conversion: Conversion, shards: int,
                  runner: ShardRunner, *, dataset: str = "custom", split: str = "", strict: bool = False,
                  overwrite: bool = False, map_size: int = DEFAULT_MAP_SIZE, stream: TextIO | None = None,
                  missing: list[tuple[str, str]] | None = None, where: str = "") -> BuildReport:
    """Build (or resume, or extend) the sharded split at ``out`` from ``items`` in ``shards`` shards, the jobs run
    by ``runner``; returns one report for the whole split (``where``: how the jobs ran, for its summary)."""
    if shards < 1:
        raise BuildError(f"--shards must be at least 1, got {shards}")
    check_labels(items, classes)
    start = time.perf_counter()
    settings = {**conversion.settings, "dataset": dataset, "split": split, "classes": list(classes)}
    _prepare_folder(out, overwrite)
    with FolderLock(out, LOCK_FILE, "videoiq data build", BuildError):
        plan = _plan(out, settings, items, shards)
        _remove_partials(out)
        by_key = {it.key: it for it in items}
        todo, kept = [], []
        for entry in plan.shards:
            if os.path.isfile(os.path.join(out, entry["name"], "data.mdb")):
                kept.append(entry["name"])
            else:
                todo.append(ShardJob(out, entry["name"], tuple(by_key[k] for k in entry["keys"]), tuple(classes),
                                     conversion, dataset, split, strict, map_size))
        report = BuildReport(out, len(items) + len(missing or []), skipped=list(missing or []),
                             max_loss=conversion.max_loss)
        progress = Progress(sum(len(j.items) for j in todo), f"building {len(todo)} of {len(plan.shards)} shards"
                            + (f" {where}" if where else ""), stream=stream)
        empty: list[str] = []
        try:
            for result in runner(todo) if todo else ():
                report.converted += result.report.converted
                report.reencoded_frames += result.report.reencoded_frames
                if not result.report.meta:
                    report.skipped.extend(result.report.skipped)  # a shard of inputs that all failed: no folder
                    empty.append(result.name)
                progress.update(result.report.planned, f"{result.name} done on {result.host}")
        finally:
            if todo:
                progress.close()
        report.meta, entries = _merge(out, plan, settings, report, set(empty), conversion.max_loss)
        report.already_present = sum(e["videos"] for e in entries if e["name"] in kept)
    report.seconds = time.perf_counter() - start
    return report


def _prepare_folder(out: str, overwrite: bool) -> None:
    if os.path.isfile(os.path.join(out, "data.mdb")) and not overwrite:
        raise BuildError(f"{out}: holds a single (unsharded) LMDB; build the shards into another folder, or "
                         "--overwrite")
    if os.path.exists(out) and not os.path.isdir(out):
        raise BuildError(f"{out}: exists and is not a folder; choose another output path")
    if overwrite and os.path.isdir(out):
        shutil.rmtree(out)
    if os.path.isdir(out):
        ours = {MANIFEST, INDEX_FILE, BUILD_PLAN, LOCK_FILE}
        strangers = [n for n in os.listdir(out) if n not in ours and not n.startswith((".shard-", "shard-"))]
        if strangers:
            raise BuildError(f"{out}: holds files that are not a sharded split's (e.g. {sorted(strangers)[0]!r}); "
                             "choose another output path")
    os.makedirs(out, exist_ok=True)


def _plan(out: str, settings: dict[str, Any], items: list[SourceVideo], shards: int) -> _Plan:
    """The plan in ``out`` (checked against this command), extended by shards for videos it does not list yet."""
    path = os.path.join(out, BUILD_PLAN)
    keys = [it.key for it in items]
    if os.path.isfile(path):
        try:
            with open(path) as f:
                raw = json.load(f)
            plan = _Plan(raw["settings"], raw["shards"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BuildError(f"{path}: unreadable build plan ({type(e).__name__}: {e}); --overwrite to start "
                             "again") from None
        check_same_settings(out, plan.settings, settings)
        planned = {k for e in plan.shards for k in e["keys"]}
        gone = planned - set(keys)
        if gone:
            raise BuildError(f"{out}: its shards hold {len(gone)} videos that are not in this list (e.g. "
                             f"{sorted(gone)[0]!r}); use the list it was built from, --overwrite or another path")
        size = max(len(e["keys"]) for e in plan.shards)
        new = [k for k in keys if k not in planned]
    else:
        if os.path.isfile(os.path.join(out, MANIFEST)):
            raise BuildError(f"{out}: a sharded split without its {BUILD_PLAN}; it cannot be extended or resumed "
                             "here: --overwrite or another path")
        plan, size, new = _Plan(settings), -(-len(keys) // shards), keys
    for s in range(0, len(new), max(1, size)):
        plan.shards.append({"name": shard_name(len(plan.shards)), "keys": new[s:s + size]})
    if new or not os.path.isfile(path):
        write_bytes_atomic(path, json.dumps({"settings": plan.settings, "shards": plan.shards}).encode())
    return plan


def _remove_partials(out: str) -> None:
    """Folders of shards whose job died before renaming them (safe to remove: this build holds the lock)."""
    for name in os.listdir(out):
        if name.startswith(".shard-") and PARTIAL in name:
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)


def _merge(out: str, plan: _Plan, settings: dict[str, Any], report: BuildReport, empty: set[str],
           max_loss: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check every planned shard against the plan and write the split's index and manifest; returns its meta and
    shard entries."""
    keys: list[str] = []
    counts: list[int] = []
    labels: list[list[int]] = []
    entries, sizes, short_sides = [], set(), []
    content = hashlib.sha256()
    skipped = list(report.skipped)
    short: dict[str, Any] = {}
    for entry in plan.shards:
        name = entry["name"]
        if name in empty:
            continue
        path = os.path.join(out, name)
        try:
            db = VideoDB(path)
        except DatabaseError as e:
            raise BuildError(f"{path}: shard {name} is damaged ({e}); delete it and re-run to build it "
                             "again") from None
        if db.meta["build"] != settings or not set(db.index.keys) <= set(entry["keys"]):
            raise BuildError(f"{path}: shard {name} is not this build's (other settings or videos); delete it "
                             "and re-run to build it again")
        keys.extend(db.index.keys)
        counts.extend(db.index.num_frames)
        labels.extend(list(ls) for ls in db.index.labels)
        skipped.extend(tuple(s) for s in db.meta["skipped_inputs"])  # each input is in one shard only
        for key, figures in db.meta["decode_loss"]["short"].items():
            short[key] = figures
            report.short.append((key, DecodeCheck.from_dict(figures).describe()))
        sizes.add(tuple(db.meta["frame_size"]) if db.meta["frame_size"] else None)
        short_sides.append(db.meta["short_side"])
        content.update(db.meta["content"].encode())
        entries.append({"name": name, "videos": len(db), "frames": int(db.meta["num_frames"]),
                        "bytes": db.nbytes, "fingerprint": db.fingerprint})
        forget(path)  # the builder keeps no shard open: a reader in this process opens (and checks) it afresh
    if not keys:
        raise BuildError(f"{out}: no video could be converted:\n" + report.summary())
    report.skipped = [tuple(s) for s in skipped]
    meta = split_meta(settings, SHARDS_FORMAT, SHARDS_VERSION, counts, labels,
                      list(next(iter(sizes))) if len(sizes) == 1 and None not in sizes else None,
                      [min(s[0] for s in short_sides), max(s[1] for s in short_sides)], [list(s) for s in skipped],
                      short, max_loss, content.hexdigest()[:16], shards=len(entries))
    index = msgpack.packb({"keys": keys, "num_frames": counts, "labels": labels})
    write_bytes_atomic(os.path.join(out, INDEX_FILE), index)
    manifest = {"format": SHARDS_FORMAT, "version": SHARDS_VERSION, "meta": meta, "shards": entries,
                "index_sha256": hashlib.sha256(index).hexdigest()}
    manifest["digest"] = manifest_digest(manifest)
    write_bytes_atomic(os.path.join(out, MANIFEST), json.dumps(manifest, indent=1).encode())
    return meta, entries
