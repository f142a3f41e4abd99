"""``videoiq bench scale``: how building, opening, planning, reading and evaluating a split grow with its size.

For each size N it takes the first N of a generated collection of tiny video files (``frames`` frames of
``size`` px, mp4, written once into ``folder`` and reused), and measures:

* build videos/s in one process (one LMDB, ``--workers 1``) and sharded over ``workers`` processes
  (``--shards``, one shard per ~2,000 videos, at least one per process);
* bytes per frame of the sharded split, and the ms to open it (manifest and index);
* in a fresh process (the driver, whose peak private memory is reported): the seconds from opening the split to the
  first training batch through Ray Data (shard probe and planning included), cold (the driver's first
  dataset, when Ray starts the worker processes that read) and warm (a second open), then an epoch's
  videos/s (the best of two epochs);
* the in-process evaluation reader's seconds per 1,000 videos (centre crop, ``workers`` loader processes).

Every figure is measured in this one run; the slope of each cost from the smallest to the largest N is
printed under the table.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import multiprocessing
import os
import shutil
import threading
import time
from typing import Any

import numpy as np

from ..atomic import write_text_atomic
from ..data.build import videos_conversion, write_database
from ..data.lists import parse_video_list
from ..data.shard_build import build_sharded, local_runner
from ..data.shards import ShardedSplit
from ..errors import UsageError
from ..progress import Progress
from .common import isolated, print_table

CLASSES = 10
PER_FOLDER = 1000  # video files per sub-folder of the generated collection


def _write_block(folder: str, start: int, stop: int, frames: int, size: int) -> None:
    from ..data.codec import write_video

    for i in range(start, stop):
        rng = np.random.default_rng(i)
        video = np.empty((frames, size, size, 3), np.uint8)
        video[:] = rng.integers(0, 256, 3, dtype=np.uint8)  # a background colour, a moving square
        side = size // 3
        for t in range(frames):
            x = (t * 2 + i) % (size - side)
            video[t, side:2 * side, x:x + side] = 255 - video[t, 0, 0]
        path = os.path.join(folder, f"{i // PER_FOLDER:04d}", f"{i:07d}.mp4")
        write_video(path, video, fps=frames)


def make_collection(folder: str, n: int, frames: int, size: int, workers: int) -> str:
    """``n`` generated videos and their list file in ``folder`` (reused when already there); the list's path."""
    listing = os.path.join(folder, f"videos_{frames}x{size}.txt")
    have = 0
    if os.path.isfile(listing):
        with open(listing) as f:
            have = sum(1 for _ in f)
    if have >= n:
        return listing
    for d in range(math.ceil(n / PER_FOLDER)):
        os.makedirs(os.path.join(folder, f"{d:04d}"), exist_ok=True)
    progress = Progress(n - have, f"generating {n} videos of {frames} x {size} px in {folder}")
    step = 500
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(_write_block, folder, s, min(n, s + step), frames, size): min(step, n - s)
                   for s in range(have, n, step)}
        for fut in cf.as_completed(futures):
            fut.result()
            progress.update(futures[fut])
    progress.close()
    write_text_atomic(listing, "".join(f"{i // PER_FOLDER:04d}/{i:07d}.mp4 {i % CLASSES}\n" for i in range(n)))
    return listing


class _PrivatePeak:
    """The peak of this process's private resident memory (``RssAnon``), sampled every 20 ms. ``ru_maxrss`` would
    also count the pages of Ray's shared object store that the driver maps while it takes batches."""

    def __enter__(self) -> _PrivatePeak:
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with open("/proc/self/status") as f:
                kib = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
            self.peak = max(self.peak, kib / 1024)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _read_case(path: str, frames: int, size: int, batch_size: int, workers: int) -> dict[str, float]:
    """In a fresh process (the Ray driver): open, first batch, epoch rate, driver peak RSS, eval s/1k."""
    import ray

    from ..data.clips import ClipSpec, VideoClipDataset, eval_loader
    from ..data.shards import open_split
    from ..ray.data import clip_dataset, iter_clip_batches
    from ..ray.train import connect

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one "execution finished" line per epoch
    connect(printer=lambda _: None)
    spec = ClipSpec(train=True, segments=frames, size=size)
    with _PrivatePeak() as memory:
        try:
            times = []
            for _ in range(2):  # cold: Ray Data's first run in this driver starts its worker processes; then warm
                start = time.perf_counter()
                split = open_split(path)
                opened = time.perf_counter()
                ds = clip_dataset(split, spec, seed=0)
                batches = iter(iter_clip_batches(ds, batch_size))
                seen = len(next(batches)["index"])
                times.append((1000 * (opened - start), time.perf_counter() - start))
                seen += sum(len(b["index"]) for b in batches)
            rates = []
            for _ in range(2):
                t = time.perf_counter()
                n = sum(len(b["index"]) for b in iter_clip_batches(ds, batch_size))
                rates.append(n / (time.perf_counter() - t))
        finally:
            ray.shutdown()
    rss = memory.peak
    val = VideoClipDataset(split, ClipSpec(train=False, segments=frames, size=size, scale_size=size))
    t = time.perf_counter()
    evaluated = sum(len(b["index"]) for b in eval_loader(val, batch_size, workers))
    eval_seconds = time.perf_counter() - t
    return {"open_ms": times[1][0], "cold_first_s": times[0][1], "first_s": times[1][1], "epoch_rate": max(rates),
            "rss_mib": rss,
            "eval_s_per_1k": 1000 * eval_seconds / evaluated, "first_epoch": seen}


def bench_scale(sizes: tuple[int, ...] = (1000, 10000, 100000), folder: str = "bench_scale", frames: int = 8,
                size: int = 32, batch_size: int = 64, workers: int = 0) -> list[dict[str, Any]]:
    """Print the scale table (see the module docstring) and return its rows."""
    workers = workers or os.cpu_count() or 1
    if not sizes or min(sizes) < 10:
        raise UsageError(f"--sizes: give sizes of at least 10 videos, got {list(sizes)}")
    os.makedirs(folder, exist_ok=True)
    listing = make_collection(os.path.join(folder, "videos"), max(sizes), frames, size, workers)
    classes = [f"c{i}" for i in range(CLASSES)]
    conversion = videos_conversion(short_side=0)
    print(f"scale: {frames} frames of {size}x{size} px per video, {workers} processes/CPUs, batches of {batch_size}")
    rows = []
    for n in sorted(sizes):
        sub = os.path.join(folder, f"n{n}")
        shutil.rmtree(sub, ignore_errors=True)
        os.makedirs(sub)
        with open(listing) as f, open(os.path.join(sub, "list.txt"), "w") as out:
            for _ in range(n):
                out.write(next(f))
        items = parse_video_list(os.path.join(sub, "list.txt"), os.path.dirname(listing))
        one = write_database(os.path.join(sub, "one.lmdb"), items, classes, conversion, workers=1)
        shutil.rmtree(os.path.join(sub, "one.lmdb"))
        shards = max(workers, round(n / 2000))
        sharded = build_sharded(os.path.join(sub, "train.lmdb"), items, classes, conversion, shards,
                                local_runner(workers))
        meta = sharded.meta
        read = isolated(_read_case, os.path.join(sub, "train.lmdb"), frames, size, batch_size, workers, threads=1)
        if read["first_epoch"] != meta["num_videos"]:
            raise RuntimeError(f"the first epoch read {read['first_epoch']} of {meta['num_videos']} videos")
        rows.append({"videos": n, "shards": shards, "build_one": n / one.seconds, "build_sharded": n / sharded.seconds,
                     "bytes_per_frame": ShardedSplit(os.path.join(sub, "train.lmdb")).nbytes / meta["num_frames"],
                     **read})
        print(f"  {n} videos done", flush=True)
    _print(rows)
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    print_table(
        ["videos", "shards", "build 1 proc v/s", "build sharded v/s", "speed-up", "B/frame", "open ms",
         "1st batch cold s", "open+1st batch s", "epoch v/s", "driver MiB", "eval s/1k"],
        [[f"{r['videos']:,}", str(r["shards"]), f"{r['build_one']:.0f}", f"{r['build_sharded']:.0f}",
          f"{r['build_sharded'] / r['build_one']:.2f}x", f"{r['bytes_per_frame']:.0f}", f"{r['open_ms']:.1f}",
          f"{r['cold_first_s']:.2f}", f"{r['first_s']:.2f}", f"{r['epoch_rate']:.0f}", f"{r['rss_mib']:.0f}",
          f"{r['eval_s_per_1k']:.2f}"]
         for r in rows])
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        grow = b["videos"] / a["videos"]
        print(f"\n  from {a['videos']:,} to {b['videos']:,} videos ({grow:.0f}x): open "
              f"{b['open_ms'] / a['open_ms']:.1f}x, open+first batch {b['first_s'] / a['first_s']:.2f}x, driver RSS "
              f"{b['rss_mib'] - a['rss_mib']:+.0f} "
              f"MiB, epoch rate {b['epoch_rate'] / a['epoch_rate']:.2f}x, eval s/1k "
              f"{b['eval_s_per_1k'] / a['eval_s_per_1k']:.2f}x, sharded build rate "
              f"{b['build_sharded'] / a['build_sharded']:.2f}x")
