"""Progress lines for long work: a rewriting bar on a terminal, a line every few seconds in a log file."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``label: done/total (pct) rate/s, ETA, extra`` printed to ``stream`` while work advances."""

    def __init__(self, total: int, label: str, unit: str = "videos", stream: TextIO | None = None,
                 interval: float | None = None):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.done, self.extra, self.written = 0, "", -1
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        self.extra = extra or self.extra
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._write(end="\r" if self.tty else "\n")

    def close(self) -> None:
        if self.tty or self.written != self.done:  # a log file already has the line of this count
            self._write(end="\n")

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        text = f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.1f}/s, "
        text += f"{elapsed:.0f} s elapsed" if self.done >= self.total else f"ETA {eta:.0f} s"
        return text + (f", {self.extra}" if self.extra else "")

    def _write(self, end: str) -> None:
        self.written = self.done
        self.stream.write(self.line() + end)
        self.stream.flush()
