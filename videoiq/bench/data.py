"""``videoiq bench data``: clips per second from one LMDB through each pipeline, measured in one run.

* decode-only, one process, one thread: JPEG bytes to pixels for the sampled frames (the physical floor
  of the work);
* samples, one process: the full per-sample work (sample, read, decode, augment), no loader machinery;
* the PyTorch ``DataLoader`` with ``workers`` processes over :class:`VideoClipDataset`;
* the Ray Data pipeline (:mod:`videoiq.ray.data`) on a local Ray with ``workers`` CPUs, with fresh draws and
  seeded (ordered blocks, as training reads it).

Each pipeline runs ``epochs`` passes over the same videos; the best pass after the first (which pays
for process start-up and imports) is reported, next to its rate per core divided by the one-process
sample rate (1.0 means a pipeline turns each core into as much work as a bare loop). Two summary lines
put the work beside its floor: the one-process sample rate and the Ray pipelines' rates per core, each
over the decode-only rate.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Callable

import numpy as np
import torch

from ..data.clips import ClipSpec, VideoClipDataset, read_clip
from ..data.codec import decode_jpeg


def _best_rate(run_pass: Callable[[], int], epochs: int) -> tuple[float, float]:
    """(best videos/s over passes 2.., first-pass videos/s)."""
    rates = []
    for _ in range(max(1, epochs)):
        start = time.perf_counter()
        n = run_pass()
        rates.append(n / (time.perf_counter() - start))
    return (max(rates[1:]) if len(rates) > 1 else rates[0]), rates[0]


def bench_data(db_path: str, videos: int = 0, frames: int = 16, size: int = 112, batch_size: int = 16,
               workers: int = 2, decoder: str = "simplejpeg", train: bool = True, epochs: int = 2) -> dict[str, float]:
    """Print and return videos/s of each pipeline on the first ``videos`` videos (0: all)."""
    spec = ClipSpec(train=train, segments=frames, size=size, scale_size=size, decoder=decoder)
    dataset = VideoClipDataset(db_path, spec)
    if videos:
        dataset.positions = dataset.positions[:videos]
    n = len(dataset)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    clips = [read_clip(dataset.db, p, spec, rng) for p in dataset.positions]
    print(f"videoiq bench data: {db_path}")
    print(f"  {n} videos x {spec.frames} frames, {'train augmentation' if train else 'centre crop'} to {size}x{size}, "
          f"decoder {decoder}, batch {batch_size}, {workers} workers, {epochs} passes each")
    print(f"  machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")

    def decode_only() -> int:
        for jpegs in clips:
            for data in jpegs:
                decode_jpeg(data, decoder)
        return n

    def one_process() -> int:
        for i in range(n):
            dataset[i]
        return n

    def dataloader_pass(loader: torch.utils.data.DataLoader) -> Callable[[], int]:
        def run() -> int:
            return sum(len(b["index"]) for b in loader)
        return run

    results: dict[str, tuple[float, float, int]] = {}
    results["decode only (1 process)"] = (*_best_rate(decode_only, epochs), 1)
    results["samples (1 process)"] = (*_best_rate(one_process, epochs), 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         persistent_workers=workers > 0, shuffle=train)
    results[f"PyTorch DataLoader ({workers} workers)"] = (*_best_rate(dataloader_pass(loader), epochs), max(1, workers))
    del loader
    for name, rate in _ray_rates(db_path, spec, dataset.positions, batch_size, workers, epochs).items():
        results[name] = (*rate, workers)

    reference = results["samples (1 process)"][0]
    print(f"\n  {'pipeline':32s} {'videos/s':>9s} {'ms/video':>9s} {'first pass':>11s} {'per core vs 1 process':>22s}")
    for name, (rate, first, cores) in results.items():
        print(f"  {name:32s} {rate:9.1f} {1000 / rate:9.2f} {first:11.1f} {rate / cores / reference:22.2f}")
    decode_rate = results["decode only (1 process)"][0]
    fresh, seeded = (results[f"Ray Data{kind} ({workers} CPUs)"][0] / workers / decode_rate
                     for kind in ("", ", seeded"))
    print(f"\n  samples / decode-only (1 process): {reference / decode_rate:.2f}")
    print(f"  Ray Data / decode-only per core: {fresh:.2f} (seeded: {seeded:.2f})")
    return {name: rate for name, (rate, _, _) in results.items()}


def _ray_rates(db_path: str, spec: ClipSpec, positions: list[int], batch_size: int, workers: int,
               epochs: int) -> dict[str, tuple[float, float]]:
    """The Ray Data pipeline with fresh draws, and seeded with ordered blocks as training runs it."""
    import ray

    from ..ray.data import clip_dataset, iter_clip_batches

    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", num_cpus=workers, include_dashboard=False,
                 log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        rates = {}
        for name, seed in ((f"Ray Data ({workers} CPUs)", None), (f"Ray Data, seeded ({workers} CPUs)", 0)):
            ds = clip_dataset(db_path, spec, positions=positions, seed=seed)
            rates[name] = _best_rate(lambda ds=ds: sum(len(b["index"]) for b in iter_clip_batches(ds, batch_size)),
                                     epochs)
        return rates
    finally:
        if started:
            ray.shutdown()
