"""What Ray processes have to say, carried to the process that started them through files in the run folder.

videoiq starts Ray with ``log_to_driver=False``: the stdout and stderr of Ray's own actors (Ray Data's
coordinators, Train's controller, Tune's trial runners) stay in Ray's session logs instead of flooding the
terminal and the job log with their tracebacks and progress lines. What the user should see instead goes
through a :class:`Relay`: a JSON-lines file that a worker (or a Tune trial) appends to

* ``{"say": line}``: a progress line, an epoch line or a ``videoiq`` log record (:meth:`Relay.handler`);
* ``{"epoch": n, "metrics": {...}}``: an epoch whose checkpoint is written, for the epoch hook of whoever
  started the run (a Tune trial reports it to Tune).

The starting process runs the Ray work in a thread and, in its own thread, follows every relay file under
the run folder (:func:`run_following`): lines go to its printer, epochs to its hook, in order, then the
work's result or error. The files live on the storage every node writes its checkpoints to, so this works
across nodes, and they stay with the run as its console record.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
POLL_SECONDS = 0.2
RELAY_FOLDER = "relay"  # under the run folder


class Relay:
    """The writing end: appends one JSON object per line to ``path`` (flushed, so a follower sees it at once)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        with self._lock, open(self.path, "a") as f:
            f.write(line)

    def say(self, line: str) -> None:
        """A line for the user's terminal."""
        self._write({"say": line})

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """An epoch whose checkpoint is written."""
        self._write({"epoch": epoch, "metrics": metrics})

    def handler(self) -> logging.Handler:
        """A logging handler that relays each record as a ``videoiq: <message>`` line."""
        relay = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                try:
                    relay.say(self.format(record))
                except OSError:  # the run folder went away; a log line is not worth failing the run
                    self.handleError(record)

        h = _Handler()
        h.setFormatter(logging.Formatter("videoiq: %(message)s"))
        return h


class Follower:
    """The reading end: new records of every file matching ``pattern`` under ``folder`` since it was made
    (what earlier starts of the same run wrote is not repeated)."""

    def __init__(self, folder: str | os.PathLike, pattern: str,
                 prefix: Callable[[Path], str] = lambda path: "") -> None:
        self.folder, self.pattern, self.prefix = Path(folder), pattern, prefix
        self.offsets = {p: p.stat().st_size for p in self.folder.glob(pattern) if p.is_file()}

    def poll(self) -> list[tuple[str, dict[str, Any]]]:
        """``(prefix, record)`` of each complete line written since the last poll, file by file."""
        out = []
        for path in sorted(self.folder.glob(self.pattern)):
            start = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    chunk = f.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next poll
            self.offsets[path] = start + end
            for line in chunk[:end].splitlines():
                try:
                    out.append((self.prefix(path), json.loads(line)))
                except ValueError:
                    continue
        return out


def run_following(work: Callable[[], T], follower: Follower, printer: Callable[[str], None],
                  on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> T:
    """Run ``work()`` in a thread while relaying ``follower``'s records here: lines to ``printer``, epochs to
    ``on_epoch``; returns its result or raises its error, after the last records are relayed."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, raised there
            box["error"] = e

    thread = threading.Thread(target=target, name="videoiq-ray-work", daemon=True)
    thread.start()
    while True:
        alive = thread.is_alive()
        for prefix, record in follower.poll():
            if "say" in record:
                printer(prefix + str(record["say"]))
            elif "epoch" in record and on_epoch is not None:
                on_epoch(int(record["epoch"]), dict(record["metrics"]))
        if not alive:
            break
        thread.join(POLL_SECONDS)
    if "error" in box:
        raise box["error"]
    return box["result"]
