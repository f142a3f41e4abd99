"""How a failure reaches the user, the same from every entry point.

* :func:`user_errors`: what counts as the user's to fix (a bad config, list file, record, checkpoint,
  storage, wandb setting, a loss that went non-finite) as opposed to a bug in videoiq;
* :func:`run_guarded`: the one handler the ``videoiq`` command and the ``launch/*.py`` scripts run their
  body in: such an error is one ``videoiq: error: <cause>`` line on stderr and exit code 2, Ctrl-C is one
  line and exit code 130, and anything else is a traceback (a bug to report);
* :class:`RemoteError`: a user error raised inside a Ray Train worker, carried back to the driver as the
  worker's own message, with the worker's full traceback kept in a file under the run folder
  (:func:`keep_traceback`) whose path the error line names. Ray wraps what a worker raises in its own
  exceptions (:func:`user_cause` and :func:`find_remote` look through them); without this the cause
  would be buried in Ray's output and the driver would end in Ray's traceback.
"""
from __future__ import annotations

import datetime
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path


class RemoteError(RuntimeError):
    """A user error raised where the driver cannot see it (a Ray Train worker): its message and the file
    that holds its traceback."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message, log)
        self.message, self.log = message, log

    def __str__(self) -> str:
        return f"{self.message} (full traceback: {self.log})"


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean a bad input, not a bug (imported here, late: they live in the modules
    that raise them, some of which import this one)."""
    from .config import ConfigError
    from .data.build import BuildError
    from .tracking import TrackingError
    from .train.checkpoint import CheckpointError, StorageError
    from .train.loop import NonFiniteLoss

    # ValueError covers ConfigError, CheckpointError and the data errors (records, frames, list files, weights)
    return (RemoteError, ConfigError, CheckpointError, BuildError, TrackingError, StorageError, NonFiniteLoss,
            ValueError, KeyError, OSError)


def first_few(names: list[str], shown: int = 4) -> str:
    """``a, b, c, d, ...``: the first few names of a list, for a message."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def error_line(error: BaseException) -> str:
    """``videoiq: error: <cause>`` (a KeyError's key without the quotes ``str`` adds)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    return f"videoiq: error: {message}"


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
    return next((e for e in _inside(error)
                 if isinstance(e, user_errors()) and not type(e).__module__.startswith("ray.")), None)


def run_guarded(body: Callable[[], int]) -> int:
    """Run an entry point's body; a user error is one line on stderr and exit code 2."""
    try:
        return body()
    except KeyboardInterrupt:
        print("videoiq: interrupted; work already committed is kept (re-running the same command resumes it)",
              file=sys.stderr, flush=True)
        return 130
    except user_errors() as e:
        print(error_line(e), file=sys.stderr, flush=True)
        return 2


def keep_traceback(folder: str | os.PathLike, who: str, error: BaseException) -> str:
    """Write ``error``'s traceback to ``<folder>/errors/<time>-<who>.log``; returns the file's path (or, if
    it cannot be written, why not: the error being reported must not be lost to a second one)."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path = Path(folder) / "errors" / f"{stamp}-{who}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(error_line(error) + "\n\n" + "".join(traceback.format_exception(error)), encoding="utf-8")
    except OSError as e:
        return f"not kept: {path} could not be written ({e})"
    return str(path)


def find_remote(error: BaseException) -> RemoteError | None:
    """The :class:`RemoteError` somewhere inside Ray's wrapping of ``error``, if there is one."""
    return next((e for e in _inside(error) if isinstance(e, RemoteError)), None)
