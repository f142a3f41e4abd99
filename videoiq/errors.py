"""How a failure reaches the user, the same from every entry point.

* :class:`VideoiqError`: the base of every error videoiq raises about what a user gave it (a config, list
  file, database, record, checkpoint, storage folder, flag, a loss that went non-finite); its message
  names the file, key or flag and what was expected. :func:`is_user_error` adds the operating system's
  errors that name a file (a folder that cannot be written, a full disk). Anything else is a bug in videoiq.
* :func:`run_guarded`: the one handler the ``videoiq`` command and the ``launch/*.py`` scripts run their
  body in. A user error is one ``videoiq: error: <cause>`` line on stderr and exit code 2; Ctrl-C is one
  line and exit code 130; a bug prints its traceback (a Ray worker's own, see below), then one line that
  says it is a bug and where the traceback is kept, and exits with 1.
* :class:`RemoteError` and :class:`RemoteBug`: a user error or a bug raised inside a Ray Train worker,
  carried back to the driver as the worker's own message (and, for a bug, its traceback), with the full
  traceback kept in a file under the run folder (:func:`keep_traceback`). Ray wraps what a worker raises in
  its own exceptions (:func:`user_cause` and :func:`find_remote` look through them); without this the cause
  would be buried in Ray's output and the driver would end in Ray's traceback.
"""
from __future__ import annotations

import datetime
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from ._version import __version__


class VideoiqError(Exception):
    """A problem with what the user gave videoiq; the message names it and what was expected."""


class UsageError(VideoiqError, ValueError):
    """A command-line flag or argument value that cannot be used (the message names the flag)."""


class UnknownNameError(VideoiqError, KeyError):
    """A name (model, dataset) that is not registered; the message lists the known ones."""


class MissingFileError(VideoiqError, FileNotFoundError):
    """A file or folder the user named that does not exist (or is not the kind expected)."""


class RemoteError(VideoiqError):
    """A user error raised where the driver cannot see it (a Ray Train worker): its message and the file
    that holds its traceback."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message, log)
        self.message, self.log = message, log

    def __str__(self) -> str:
        return f"{self.message} (full traceback: {self.log})"


class RemoteBug(Exception):
    """A bug raised in a Ray Train worker: what it was, the worker's traceback and the file that keeps it."""

    def __init__(self, message: str, log: str, worker_traceback: str) -> None:
        super().__init__(message, log, worker_traceback)
        self.message, self.log, self.worker_traceback = message, log, worker_traceback

    def __str__(self) -> str:
        return f"{self.message} (in a Ray Train worker; traceback kept in {self.log})"


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is the user's to fix: one of videoiq's own errors, or an OS error naming a file."""
    if isinstance(error, VideoiqError):
        return True
    return isinstance(error, OSError) and bool(getattr(error, "filename", None))


def first_few(names: list[str], shown: int = 4) -> str:
    """``a, b, c, d, ...``: the first few names of a list, for a message."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def error_line(error: BaseException) -> str:
    """``videoiq: error: <cause>`` (a KeyError's key without the quotes ``str`` adds)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    return f"videoiq: error: {message}"


def bug_line(error: BaseException) -> str:
    """The line under a bug's traceback: what it was, and that the fault is videoiq's."""
    where = f"; traceback kept in {error.log}" if isinstance(error, RemoteBug) else ""
    what = error.message if isinstance(error, RemoteBug) else f"{type(error).__name__}: {error}"
    return (f"videoiq: internal error: {what}. This is a bug in videoiq {__version__}, not a problem with your "
            f"input{where}; please report it with the traceback above")


def _inside(error: BaseException) -> Iterator[BaseException]:
    """``error`` and, through Ray's wrappers, every exception they keep: a worker group's per-rank failures,
    a task's or the controller's wrapped exception, their cause chain."""
    seen: set[int] = set()
    todo: list[object] = [error]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if not type(e).__module__.startswith("ray."):
            continue  # only Ray's wrappers are looked into: a bug raised while handling a user error stays a bug
        failures = getattr(e, "worker_failures", None)  # ray.train.WorkerGroupError: rank -> exception
        if isinstance(failures, dict):
            todo.extend(failures.values())
        todo.extend(getattr(e, name, None) for name in ("_base_exc", "cause", "controller_failure"))
        todo.extend((e.__cause__, e.__context__))


def user_cause(error: BaseException) -> BaseException | None:
    """The user error inside Ray's wrapping of ``error`` (a Ray Data read of a garbled record reaches the
    worker as a ``RayTaskError`` holding the ``RecordError``), or None when the failure is not the user's."""
    return next((e for e in _inside(error) if is_user_error(e) and not type(e).__module__.startswith("ray.")), None)


def find_remote(error: BaseException) -> RemoteError | RemoteBug | None:
    """The :class:`RemoteError` or :class:`RemoteBug` somewhere inside Ray's wrapping of ``error``, if any."""
    return next((e for e in _inside(error) if isinstance(e, (RemoteError, RemoteBug))), None)


def run_guarded(body: Callable[[], int]) -> int:
    """Run an entry point's body: a user error is one line on stderr (exit code 2), a bug its traceback and a
    line that says so (exit code 1)."""
    try:
        return body()
    except KeyboardInterrupt:
        print("videoiq: interrupted; work already committed is kept (re-running the same command resumes it)",
              file=sys.stderr, flush=True)
        return 130
    except Exception as e:
        if is_user_error(e):
            print(error_line(e), file=sys.stderr, flush=True)
            return 2
        shown = e.worker_traceback if isinstance(e, RemoteBug) else "".join(traceback.format_exception(e))
        print(shown.rstrip("\n"), file=sys.stderr)
        print(bug_line(e), file=sys.stderr, flush=True)
        return 1


def keep_traceback(folder: str | os.PathLike, who: str, error: BaseException) -> str:
    """Write ``error``'s traceback to ``<folder>/errors/<time>-<who>.log``; returns the file's path (or, if
    it cannot be written, why not: the error being reported must not be lost to a second one)."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path = Path(folder) / "errors" / f"{stamp}-{who}.log"
    line = error_line(error) if is_user_error(error) else bug_line(error)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(line + "\n\n" + "".join(traceback.format_exception(error)), encoding="utf-8")
    except OSError as e:
        return f"not kept: {path} could not be written ({e})"
    return str(path)
