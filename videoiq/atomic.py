"""Files written whole or not at all (the result files a crash must never leave half-written), and one writer
at a time per output folder.

Checkpoints have their own writer (``videoiq.train.checkpoint.save_checkpoint``: binary, synced to
disk, with a storage error naming what was kept).
"""
from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to a temporary file beside ``path``, then rename it over ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, sync it to disk, then rename it over ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


class FolderLock:
    """One writer at a time per output folder: an exclusive lock on ``folder/name`` held while in the ``with``
    block (released by the operating system if the process dies). A second writer gets ``error(message)``
    naming the holder; ``what`` names the command that writes (``videoiq data build``)."""

    def __init__(self, folder: str | os.PathLike, name: str, what: str, error: type[Exception]):
        self.path, self.what, self.error = os.path.join(folder, name), what, error

    def __enter__(self) -> FolderLock:
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise self.error(f"{os.path.dirname(self.path)}: another `{self.what}` is writing into it ({holder}); "
                             "wait for it to finish, or stop it and re-run") from None
        self.file.truncate(0)
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.file.truncate(0)
        self.file.close()
