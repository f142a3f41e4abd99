"""What every ``videoiq bench`` command shares: timing, per-case peak memory, and the setting line.

Each measured case runs in its own spawned process (:func:`isolated`), so its peak memory is its
own (``ru_maxrss``: the process's resident high-water mark, the Python and torch runtime included;
on a GPU, the peak of ``torch.cuda.max_memory_allocated`` too) and no case warms caches for another.
Times are medians over repeats after warm-up calls; on a GPU every timed call is synchronised.
"""
from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def setting_line(device: str, threads: int) -> str:
    """The machine, library versions, device and threads every figure was measured with."""
    name = torch.cuda.get_device_name() if device.startswith("cuda") else (platform.processor() or platform.machine())
    return (f"device {device} ({name}), {threads} torch threads, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], Any], device: str, warmup: int = 1, repeat: int = 5) -> float:
    """Median wall time of ``fn()`` over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mib(device: str) -> float:
    """This process's peak resident memory (CPU) or peak allocated device memory (GPU), in MiB."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _child(fn: Callable[..., Any], threads: int, args: tuple, queue: Any) -> None:
    torch.set_num_threads(threads)
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as e:  # report, do not hang the parent
        queue.put(("error", f"{type(e).__name__}: {e}"))


def isolated(fn: Callable[..., Any], *args: Any, threads: int) -> Any:
    """``fn(*args)`` in a fresh spawned process with ``threads`` torch threads; its return value."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, threads, args, queue))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark case {getattr(fn, '__name__', fn)} failed: {value}")
    return value


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Right-aligned columns, the first left-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True))))
