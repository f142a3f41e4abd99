"""Converters into the videoiq LMDB format (see ``records.py``): frame folders or video files in, one database out.

Conversion is parallel (worker processes encode, the parent alone writes), commits every few dozen
videos, and is resumable: ``__build__`` holds the settings and the planned keys, so re-running the
same command skips the videos already written and finishes; a different command on the same path is
refused instead of mixing two datasets. Inputs that cannot be converted (missing frames, undecodable
images or videos) are skipped and listed in the summary and in ``__meta__["skipped_inputs"]``, unless
``strict`` asks to stop at the first one. A video that decodes to fewer frames than its container
declares (truncated, damaged) keeps what decoded, its figures are in its record's header, and one that
lost more than ``max_loss`` is named in the summary and in ``__meta__["decode_loss"]`` (refused under
``strict``). A malformed list file is an error before anything is written.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, TextIO

import lmdb
import msgpack

from .._version import __version__
from ..errors import VideoiqError
from ..progress import Progress
from .codec import (
    DEFAULT_MAX_LOSS,
    DecodeCheck,
    FrameError,
    VideoDecodeError,
    encode_jpeg,
    normalize_jpeg,
    probe_video,
    read_video,
)
from .lists import SourceVideo
from .records import BUILD_KEY, FORMAT, INDEX_KEY, META_KEY, VERSION, decode_header, encode_record, forget, iter_keys

DEFAULT_MAP_SIZE = 1 << 40  # 1 TiB of address space; the file only grows as records are written


class BuildError(VideoiqError, RuntimeError):
    """A conversion that cannot start or produced nothing."""


class InputError(VideoiqError, ValueError):
    """One input video or frame folder that cannot be converted (skipped unless strict)."""


@dataclass
class BuildReport:
    """What a conversion did."""

    path: str
    planned: int
    converted: int = 0
    already_present: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    short: list[tuple[str, str]] = field(default_factory=list)  # (key, figures) of videos that decoded short
    max_loss: float = DEFAULT_MAX_LOSS
    reencoded_frames: int = 0
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"{self.path}: {self.meta.get('num_videos', 0)} videos, {self.meta.get('num_frames', 0)} frames, "
            f"{self.meta.get('num_classes', 0)} classes"
            + (f" in {self.meta['shards']} shards" if self.meta.get("shards") else "")
            + f" ({self.converted} converted now, {self.already_present} "
            f"already present, {len(self.skipped)} skipped, {len(self.short)} decoded short) in {self.seconds:.1f} s"
        ]
        if self.reencoded_frames:
            lines.append(f"  {self.reencoded_frames} frames were not plain RGB JPEGs and were re-encoded")
        for source, reason in self.skipped[:20]:
            lines.append(f"  skipped {source}: {reason}")
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more (all listed in __meta__['skipped_inputs'])")
        for key, figures in self.short[:20]:
            lines.append(f"  short {key}: {figures}, more than --max-loss {self.max_loss:.0%}; kept as decoded")
        if len(self.short) > 20:
            lines.append(f"  ... and {len(self.short) - 20} more (all listed in __meta__['decode_loss'])")
        return "\n".join(lines)


@dataclass(frozen=True)
class SizeEstimate:
    """What a video conversion will write, from declared durations and a few frames encoded as it will."""

    videos: int
    seconds: float  # declared, all videos together
    frames_per_second: float  # --fps, or the sampled videos' own rate
    bytes_per_frame: float  # mean JPEG size measured on the sample
    measured_frames: int
    measured_videos: int

    @property
    def frames(self) -> float:
        """Frames the database will hold."""
        return self.seconds * self.frames_per_second

    @property
    def total_bytes(self) -> float:
        """Bytes of JPEG frames the database will hold (the LMDB adds a little per record)."""
        return self.frames * self.bytes_per_frame

    def describe(self, short_side: int, quality: int) -> str:
        """One line: the figures and how they were measured."""
        return (f"size estimate: {self.videos} videos, {self.seconds:,.0f} s declared, at {self.frames_per_second:.3g} "
                f"fps ~{self.frames:,.0f} frames x ~{self.bytes_per_frame / 1024:.1f} KiB (measured on "
                f"{self.measured_frames} frames of {self.measured_videos} videos at short side {short_side}, quality "
                f"{quality}) = ~{_human(self.total_bytes)}")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def estimate_size(items: list[SourceVideo], seconds: list[float | None] | None, fps: float | None,
                  short_side: int, quality: int, sample: int = 8, frames_per_video: int = 8) -> SizeEstimate | None:
    """The database size of converting ``items``: their declared seconds (``seconds`` from an annotation file,
    else a sampled file's header, else the sampled headers' mean) x frames per second x bytes per frame, the
    last measured by encoding up to ``frames_per_video`` frames, one a second, of a few videos as the
    conversion will. None when no sampled video opens."""
    n = min(sample, len(items))
    picks = sorted({round(i * (len(items) - 1) / max(1, n - 1)) for i in range(n)})  # evenly spread, both ends
    probed: dict[int, tuple[float, float]] = {}  # item -> (declared seconds, frame rate)
    sizes: list[int] = []
    measured_videos = 0
    for i in picks:
        it = items[i]
        try:
            declared, rate = probe_video(it.path)
            probed[i] = (it.span[1] - it.span[0] if it.span else declared, rate)
            if measured_videos < 3:
                before = len(sizes)
                for pixels in read_video(it.path, 1.0, short_side, it.span):
                    sizes.append(len(encode_jpeg(pixels, quality)))
                    if len(sizes) - before == frames_per_video:
                        break
                measured_videos += 1
        except VideoDecodeError:
            continue  # the build names it; the estimate uses the others
    if not probed or not sizes:
        return None
    mean_seconds = sum(p[0] for p in probed.values()) / len(probed)
    known = seconds if seconds is not None else [None] * len(items)
    total = sum(s if s is not None else probed.get(i, (mean_seconds,))[0] for i, s in enumerate(known))
    rate = fps if fps is not None else sum(p[1] for p in probed.values()) / len(probed)
    return SizeEstimate(len(items), total, rate, sum(sizes) / len(sizes), len(sizes), measured_videos)


# --------------------------------------------------------------------------------------------------
# Per-video conversion (runs in worker processes; returns record parts, never touches the database)


def convert_frame_folder(item: SourceVideo, template: str, verify: bool) -> tuple[bytes, int]:
    """The record of one frame folder and how many frames were re-encoded."""
    frames, size, reencoded = [], None, 0
    for number in range(item.first, item.first + item.count):
        p = os.path.join(item.path, template.format(number))
        try:
            with open(p, "rb") as f:
                data = f.read()
            data, h, w, again = normalize_jpeg(data, verify)
        except FileNotFoundError:
            raise InputError(f"missing frame {p}") from None
        except (OSError, FrameError) as e:
            raise InputError(f"{p}: {e}") from None
        if size is None:
            size = (h, w)
        elif size != (h, w):
            raise InputError(f"{p}: {w}x{h} differs from the first frame's {size[1]}x{size[0]}")
        frames.append(data)
        reencoded += again
    return encode_record(frames, list(item.labels), size[0], size[1], item.key), reencoded


def convert_video_file(item: SourceVideo, fps: float | None, short_side: int, quality: int,
                       refuse_over: float | None = None) -> tuple[bytes, int]:
    """The record of one video file (or of its ``item.span``), decoded at ``fps`` with the short side at
    ``short_side``; with ``refuse_over``, a video that lost more than that share of its frames is refused."""
    frames, shape = [], (0, 0)
    video = read_video(item.path, fps, short_side, item.span)
    try:
        for pixels in video:  # encoded one by one: a long video never sits decoded
            frames.append(encode_jpeg(pixels, quality))
            shape = pixels.shape[:2]
    except VideoDecodeError as e:
        raise InputError(str(e)) from None
    check: DecodeCheck = video.check
    if refuse_over is not None and check.short(refuse_over):
        raise InputError(f"{item.path}: {check.describe()}, more than --max-loss {refuse_over:.0%}")
    return encode_record(frames, list(item.labels), shape[0], shape[1], item.key, check.as_dict()), 0


def _run_one(fn: Callable[..., tuple[bytes, int]], item: SourceVideo,
             args: tuple) -> tuple[str, bytes | None, str, int]:
    try:
        record, reencoded = fn(item, *args)
        return item.key, record, "", reencoded
    except InputError as e:
        return item.key, None, str(e), 0


# --------------------------------------------------------------------------------------------------
# The writer


@dataclass(frozen=True)
class Conversion:
    """How every input of a build becomes a record: the settings the database records (a resumed build must
    match them), the per-input function (run in worker processes or Ray tasks: picklable) and its arguments."""

    settings: dict[str, Any]
    fn: Callable[..., tuple[bytes, int]]
    args: tuple
    max_loss: float = DEFAULT_MAX_LOSS


def frames_conversion(template: str = "{:05d}.jpg", verify: bool = True) -> Conversion:
    """Frame folders (``template.format(n)`` file names), each JPEG checked (decoded when ``verify``)."""
    try:
        template.format(1)
    except (IndexError, KeyError, ValueError) as e:
        raise BuildError(f"frame template {template!r} does not format a frame number ({e})") from None
    return Conversion({"kind": "frames", "template": template, "verify": verify}, convert_frame_folder,
                      (template, verify))


def videos_conversion(fps: float | None = None, short_side: int = 256, quality: int = 90,
                      max_loss: float = DEFAULT_MAX_LOSS, strict: bool = False) -> Conversion:
    """Video files decoded with PyAV at ``fps``, short side ``short_side``; videos that lose more than
    ``max_loss`` of their declared frames are reported (refused when ``strict``)."""
    if not 0 <= max_loss < 1:
        raise BuildError(f"max_loss must be a fraction in [0, 1), got {max_loss}")
    return Conversion({"kind": "videos", "fps": fps, "short_side": short_side, "quality": quality},
                      convert_video_file, (fps, short_side, quality, max_loss if strict else None), max_loss)


def build_frames(out: str, items: list[SourceVideo], classes: list[str], template: str = "{:05d}.jpg",
                 verify: bool = True, **kw: Any) -> BuildReport:
    """Convert frame folders into the LMDB at ``out`` (``kw``: :func:`write_database`'s)."""
    return write_database(out, items, classes, frames_conversion(template, verify), **kw)


def build_videos(out: str, items: list[SourceVideo], classes: list[str], fps: float | None = None,
                 short_side: int = 256, quality: int = 90, max_loss: float = DEFAULT_MAX_LOSS,
                 **kw: Any) -> BuildReport:
    """Convert video files into the LMDB at ``out`` (``kw``: :func:`write_database`'s)."""
    conversion = videos_conversion(fps, short_side, quality, max_loss, kw.get("strict", False))
    return write_database(out, items, classes, conversion, **kw)


def write_database(
    out: str, items: list[SourceVideo], classes: list[str], conversion: Conversion, *, dataset: str = "custom",
    split: str = "", workers: int = 1, strict: bool = False, overwrite: bool = False, commit_every: int = 64,
    commit_seconds: float = 2.0, map_size: int = DEFAULT_MAP_SIZE, stream: TextIO | None = None,
    missing: list[tuple[str, str]] | None = None, require_videos: bool = True,
) -> BuildReport:
    """The one conversion engine behind every source and every shard: ``items`` into the LMDB at ``out``.
    ``missing``: inputs the caller found no file for (listed as skipped, like inputs that fail to convert);
    ``require_videos=False`` (a shard): when nothing converts, the report has empty ``meta`` instead of an error."""
    settings = {**conversion.settings, "dataset": dataset, "split": split, "classes": list(classes)}
    check_labels(items, classes)
    start = time.perf_counter()
    env = _open_for_writing(out, overwrite, map_size)
    report = BuildReport(out, len(items) + len(missing or []), skipped=list(missing or []),
                         max_loss=conversion.max_loss)
    try:
        present = _claim(env, out, settings, [it.key for it in items])
        todo = [it for it in items if it.key not in present]
        report.already_present = len(items) - len(todo)
        if todo:
            _convert(env, todo, conversion.fn, conversion.args, workers, strict, (commit_every, commit_seconds),
                     report, stream)
        report.meta = _finalize(env, out, items, settings, report, require_videos)
    finally:
        env.close()
    report.seconds = time.perf_counter() - start
    return report


def check_labels(items: list[SourceVideo], classes: list[str]) -> None:
    """Refuse, before anything is written, a list whose labels fall outside its classes."""
    if not classes:
        raise BuildError("no class names given")
    bad = [f"{it.key}: {list(it.labels)}" for it in items if any(not 0 <= x < len(classes) for x in it.labels)]
    if bad:
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise BuildError(f"{len(bad)} videos have labels outside 0..{len(classes) - 1}:\n  "
                         + "\n  ".join(bad[:10]) + more)


def check_same_settings(out: str, previous: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse to resume or extend ``out`` with other settings than it was built with, naming those that differ."""
    if previous != settings:
        diff = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        raise BuildError(f"{out}: was built with different settings ({', '.join(diff)}); use the same command to "
                         "resume, or --overwrite to start again")


def split_meta(settings: dict[str, Any], fmt: str, version: int, counts: list[int], labels: list[list[int]],
               frame_size: list[int] | None, short_side: list[int], skipped: list[list[str]],
               short: dict[str, Any], max_loss: float, content: str, **extra: Any) -> dict[str, Any]:
    """The ``__meta__`` of a database (or a sharded split's manifest meta, with ``extra`` fields) from what it
    holds: frame counts and labels per video, in order, and the figures of the build."""
    return {
        "format": fmt, "version": version, "dataset": settings["dataset"], "split": settings["split"],
        "classes": settings["classes"], "num_classes": len(settings["classes"]), "num_videos": len(counts),
        "num_frames": sum(counts),
        "frames_per_video": {"min": min(counts), "max": max(counts), "mean": sum(counts) / len(counts)},
        "frame_size": frame_size, "short_side": short_side,
        "multilabel": any(len(ls) > 1 for ls in labels), "skipped": len(skipped), "skipped_inputs": skipped,
        "decode_loss": {"max_loss": max_loss, "short": short}, "content": content, **extra,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "videoiq_version": __version__,
        "build": settings,
    }


def _open_for_writing(out: str, overwrite: bool, map_size: int) -> lmdb.Environment:
    forget(out)
    if os.path.exists(out):
        entries = set(os.listdir(out)) if os.path.isdir(out) else {"?"}
        if entries - {"data.mdb", "lock.mdb"}:
            raise BuildError(f"{out}: exists and is not an LMDB directory; choose another output path")
        if overwrite and entries:
            shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    try:
        return lmdb.open(out, map_size=map_size, readahead=False, meminit=False, max_dbs=0)
    except lmdb.Error as e:
        raise BuildError(f"{out}: cannot open for writing ({e}); "
                         "a smaller --map-size may help on this filesystem") from None


def _claim(env: lmdb.Environment, out: str, settings: dict[str, Any], keys: list[str]) -> set[str]:
    """Record this build's settings, or check they match the interrupted/finished build found at ``out``."""
    with env.begin(write=True) as txn:
        raw_build, raw_meta = txn.get(BUILD_KEY), txn.get(META_KEY)
        previous = msgpack.unpackb(raw_build)["settings"] if raw_build else (
            msgpack.unpackb(raw_meta).get("build") if raw_meta else None)
        present = set(iter_keys(env)) if raw_build or raw_meta else set()
        if previous is None and present:
            raise BuildError(f"{out}: holds records of something else (no videoiq build settings); use a new path")
        if previous is not None:
            check_same_settings(out, previous, settings)
        strangers = present - set(keys)
        if strangers:
            raise BuildError(
                f"{out}: holds {len(strangers)} videos that are not in this list (e.g. {sorted(strangers)[0]!r}); "
                "use --overwrite or another path"
            )
        txn.put(BUILD_KEY, msgpack.packb({"settings": settings, "keys": keys}))
    return present


def _convert(env: lmdb.Environment, todo: list[SourceVideo], fn: Callable[..., tuple[bytes, int]], args: tuple,
             workers: int, strict: bool, commit_after: tuple[int, float], report: BuildReport,
             stream: TextIO | None) -> None:
    """Convert ``todo`` and write each record; commit every ``commit_after`` = (videos, seconds), whichever
    comes first, so a killed run loses at most that much work."""
    progress = Progress(len(todo), f"converting into {os.path.basename(env.path())}", stream=stream)
    txn, pending, last_commit = env.begin(write=True), 0, time.monotonic()

    def take(key: str, record: bytes | None, error: str, reencoded: int) -> None:
        nonlocal txn, pending, last_commit
        if record is None:
            if strict:
                raise BuildError(f"{key}: {error} (strict mode; {report.converted} videos written so far, "
                                 "re-run to resume)")
            report.skipped.append((key, error))
        else:
            txn.put(key.encode(), record)
            report.converted += 1
            report.reencoded_frames += reencoded
            pending += 1
            if pending >= commit_after[0] or time.monotonic() - last_commit >= commit_after[1]:
                txn.commit()
                txn, pending, last_commit = env.begin(write=True), 0, time.monotonic()
        progress.update(1, f"{len(report.skipped)} skipped" if report.skipped else "")

    try:
        if workers <= 1:
            for it in todo:
                take(*_run_one(fn, it, args))
        else:
            ctx = multiprocessing.get_context("spawn")  # no forked copies of the open write environment
            with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                queue = iter(todo)
                running = {pool.submit(_run_one, fn, it, args) for it in _take(queue, 4 * workers)}
                while running:
                    done, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        take(*fut.result())
                    running |= {pool.submit(_run_one, fn, it, args) for it in _take(queue, len(done))}
        txn.commit()
    except BaseException:
        txn.commit()  # keep every finished record: the same command resumes from here
        progress.close()
        raise
    progress.close()


def _take(it: Any, n: int) -> list[SourceVideo]:
    out = []
    for _ in range(n):
        nxt = next(it, None)
        if nxt is None:
            break
        out.append(nxt)
    return out


def _finalize(env: lmdb.Environment, out: str, items: list[SourceVideo], settings: dict[str, Any],
              report: BuildReport, require_videos: bool = True) -> dict[str, Any]:
    keys, counts, labels, sizes = [], [], [], []
    content = hashlib.sha256()  # over every record's header (labels, each frame's JPEG size, source), in order
    short: dict[str, dict[str, Any]] = {}
    with env.begin(write=True, buffers=True) as txn:
        for it in items:
            value = txn.get(it.key.encode())
            if value is None:
                continue
            header, start = decode_header(value, out, it.key)
            content.update(it.key.encode() + b"\0" + bytes(value[:start]))
            keys.append(it.key)
            counts.append(header.num_frames)
            labels.append(list(header.labels))
            sizes.append((header.height, header.width))
            if header.decode is not None:
                check = DecodeCheck.from_dict(header.decode)
                if check.short(report.max_loss):
                    short[it.key] = header.decode
                    report.short.append((it.key, check.describe()))
        if not keys:
            if not require_videos:
                return {}
            raise BuildError(f"{out}: no video could be converted:\n" + report.summary())
        meta = split_meta(settings, FORMAT, VERSION, counts, labels,
                          list(sizes[0]) if len(set(sizes)) == 1 else None,
                          [min(min(s) for s in sizes), max(min(s) for s in sizes)],
                          [list(s) for s in report.skipped], short, report.max_loss, content.hexdigest()[:16])
        txn.put(INDEX_KEY, msgpack.packb({"keys": keys, "num_frames": counts, "labels": labels}))
        txn.put(META_KEY, msgpack.packb(meta))
        txn.delete(BUILD_KEY)
    env.sync()
    return meta
