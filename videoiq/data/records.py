"""The videoiq LMDB format (version 1): one record per video, a ``__meta__`` and an ``__index__`` record.

This module owns the byte layout, reading it back, and every error about a database's contents. It
needs ``lmdb`` and ``msgpack`` only, and nothing here unpickles: a record is a small fixed header,
a msgpack map and the JPEG bytes of the frames back to back::

    value  = b"VIQR" | u32 version (=1) | u32 n | header (n bytes of msgpack) | frame 0 | frame 1 | ...
    header = {"labels": [int, ...],          # class ids; empty when unknown (test sets)
              "sizes": [int, ...],           # byte length of each JPEG frame, in frame order
              "height": int, "width": int,   # every frame of a video has this size
              "source": str,                 # where it came from (relative video path or frame folder)
              "decode": {...}}               # videos only: declared vs decoded frames (see DecodeCheck.as_dict)

All integers in the fixed part are little-endian. Frame ``i`` starts at ``12 + n + sum(sizes[:i])``,
so a reader slices out only the frames it samples without touching the others.

Two reserved keys (video keys never start with ``__``)::

    __meta__  = msgpack {"format": "videoiq-lmdb", "version": 1, "dataset", "split", "classes": [names],
                         "num_classes", "num_videos", "num_frames", "frames_per_video": {"min","max","mean"},
                         "frame_size": [h, w] or None, "short_side": [min, max], "multilabel", "skipped",
                         "skipped_inputs", "decode_loss": {"max_loss", "short": {key: figures}},
                         "content": a digest of every record's header (labels, frame sizes, source),
                         "created", "videoiq_version", "build": {how it was converted}}
    __index__ = msgpack {"keys": [str], "num_frames": [int], "labels": [[int]]}   # in the input list's order

A database without ``__meta__`` is a conversion still in progress (``__build__`` holds its settings);
readers refuse it. Keys are UTF-8 video ids (the relative path of the video or frame folder, without
extension). Open databases read-only with ``lock=False``: many processes read one file at once.
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Any, Iterator

import lmdb
import msgpack

from ..errors import VideoiqError

FORMAT = "videoiq-lmdb"
VERSION = 1
MAGIC = b"VIQR"
META_KEY = b"__meta__"
INDEX_KEY = b"__index__"
BUILD_KEY = b"__build__"
RESERVED_PREFIX = "__"
_FIXED = struct.Struct("<4sII")  # magic, version, header length


class DatabaseError(VideoiqError, ValueError):
    """A database that is missing, of another format or version, unfinished or inconsistent."""


class RecordError(VideoiqError, ValueError):
    """A video record that cannot be read; names the database and the key."""

    def __init__(self, db: str, key: str, reason: str):
        super().__init__(f"{db}: record {key!r}: {reason}")
        self.db, self.key, self.reason = db, key, reason

    def __reduce__(self):  # rebuilt from its three parts when a Ray task's error travels to a worker
        return type(self), (self.db, self.key, self.reason)


@dataclass(frozen=True)
class RecordHeader:
    """What a record says about its video, without the frame bytes."""

    labels: tuple[int, ...]
    sizes: tuple[int, ...]
    height: int
    width: int
    source: str
    decode: dict[str, Any] | None = None  # videos: declared vs decoded frames; None for frame folders

    @property
    def num_frames(self) -> int:
        return len(self.sizes)


def encode_record(frames: list[bytes], labels: list[int], height: int, width: int, source: str,
                  decode: dict[str, Any] | None = None) -> bytes:
    """The bytes of one video record (JPEG ``frames`` in order; ``decode``: how much of a video file decoded)."""
    if not frames:
        raise ValueError("a video record needs at least one frame")
    fields = {"labels": [int(x) for x in labels], "sizes": [len(f) for f in frames],
              "height": int(height), "width": int(width), "source": str(source)}
    if decode is not None:
        fields["decode"] = decode
    header = msgpack.packb(fields)
    return b"".join([_FIXED.pack(MAGIC, VERSION, len(header)), header, *frames])


def decode_header(value: bytes | memoryview, db: str = "<bytes>", key: str = "?") -> tuple[RecordHeader, int]:
    """The header of a record and the offset of its first frame; checks the layout is complete."""
    if len(value) < _FIXED.size:
        raise RecordError(db, key, f"truncated: {len(value)} bytes, shorter than the {_FIXED.size}-byte prefix")
    magic, version, n = _FIXED.unpack_from(value)
    if magic != MAGIC:
        raise RecordError(db, key, f"not a videoiq record (starts with {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise RecordError(db, key, f"record format version {version}; this videoiq reads version {VERSION}")
    start = _FIXED.size + n
    if start > len(value):
        raise RecordError(db, key, f"truncated: header of {n} bytes but only {len(value) - _FIXED.size} follow")
    try:
        h = msgpack.unpackb(value[_FIXED.size:start])
        header = RecordHeader(
            tuple(int(x) for x in h["labels"]), tuple(int(x) for x in h["sizes"]),
            int(h["height"]), int(h["width"]), str(h["source"]), h.get("decode"),
        )
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
        raise RecordError(db, key, f"unreadable header ({type(e).__name__}: {e})") from None
    if not header.sizes or min(header.sizes) <= 0:
        raise RecordError(db, key, "header lists no frames or an empty frame")
    if start + sum(header.sizes) != len(value):
        raise RecordError(
            db, key, f"truncated or padded: frames need {sum(header.sizes)} bytes, {len(value) - start} present"
        )
    return header, start


def split_frames(value: bytes | memoryview, header: RecordHeader, start: int, indices: list[int]) -> list[bytes]:
    """The JPEG bytes of frames ``indices`` (copied out, so they outlive an LMDB transaction)."""
    offsets = [start]
    for s in header.sizes:
        offsets.append(offsets[-1] + s)
    view = memoryview(value)
    return [bytes(view[offsets[i]:offsets[i + 1]]) for i in indices]


# --------------------------------------------------------------------------------------------------
# Environments: py-lmdb refuses to open one database twice in a process, Ray reuses worker processes,
# and a forked child (a DataLoader worker) inherits both the parent's environment and that refusal.

_ENVS: dict[str, tuple[int, lmdb.Environment]] = {}


def open_readonly(path: str) -> lmdb.Environment:
    """A read-only environment for ``path``, opened once per process.

    In a forked child the inherited environment is closed (which only drops the child's copies of the
    map and file handles) and the database opened afresh, as LMDB requires.
    """
    real = os.path.realpath(path)
    cached = _ENVS.get(real)
    if cached is not None and cached[0] == os.getpid():
        return cached[1]
    if cached is not None:
        cached[1].close()
    if not os.path.exists(os.path.join(real, "data.mdb")):
        raise DatabaseError(f"{path}: no LMDB database here (expected {os.path.join(path, 'data.mdb')})")
    try:
        env = lmdb.open(real, readonly=True, lock=False, readahead=False, meminit=False, max_readers=1024)
    except lmdb.Error as e:
        raise DatabaseError(f"{path}: LMDB cannot open it ({e})") from None
    _check_whole(path, env)
    _ENVS[real] = (os.getpid(), env)
    return env


def _check_whole(path: str, env: lmdb.Environment) -> None:
    """Refuse a ``data.mdb`` shorter than the pages its header says are in use (a copy cut short, a full disk):
    reading such a map past the file's end would kill the process with SIGBUS, not raise."""
    data = os.path.join(path, "data.mdb")
    used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.path.getsize(data)
    if used > size:
        env.close()
        raise DatabaseError(f"{data}: truncated: the database uses {used:,} bytes, the file has {size:,}; copy it "
                            "again from where it was built, or rebuild it with `videoiq data build`")


def _unpack_reserved(path: str, name: str, value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return msgpack.unpackb(value)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise DatabaseError(f"{path}: the {name} record is not readable msgpack ({type(e).__name__})") from None


@dataclass(frozen=True)
class VideoIndex:
    """Keys, frame counts and labels of every video, in the order the database lists them."""

    keys: tuple[str, ...]
    num_frames: tuple[int, ...]
    labels: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.keys)


class SplitView:
    """What every kind of split answers from its ``meta`` and ``index`` (a single LMDB, a sharded split)."""

    meta: dict[str, Any]
    index: VideoIndex

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def __len__(self) -> int:
        return len(self.index)


class VideoDB(SplitView):
    """A finished videoiq LMDB opened for reading: ``meta``, ``index`` and frame access by position."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise DatabaseError(f"{self.path}: no such database directory")
        env = open_readonly(self.path)
        with env.begin() as txn:
            raw_meta, raw_index = txn.get(META_KEY), txn.get(INDEX_KEY)
            meta = _unpack_reserved(self.path, "__meta__", raw_meta)
            index = _unpack_reserved(self.path, "__index__", raw_index)
            unfinished = txn.get(BUILD_KEY) is not None
            original = txn.get(b"__keys__") is not None
        if meta is None:
            if original:
                raise DatabaseError(
                    f"{self.path}: an LMDB written by the original VideoIQ create_lmdb.py (pyarrow records), which "
                    "videoiq does not read; convert the frame folders with `videoiq data build frames`"
                )
            if unfinished:
                raise DatabaseError(
                    f"{self.path}: conversion not finished (no __meta__ yet); re-run the same "
                    "`videoiq data build` command to finish it"
                )
            raise DatabaseError(f"{self.path}: not a videoiq database (no __meta__ record)")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else meta
            raise DatabaseError(f"{self.path}: __meta__ says format {found!r}, expected {FORMAT!r}")
        if meta.get("version") != VERSION:
            raise DatabaseError(
                f"{self.path}: format version {meta.get('version')!r}; this videoiq reads version {VERSION}. "
                "Rebuild it with this version's `videoiq data build`"
            )
        try:
            self.index = VideoIndex(
                tuple(str(k) for k in index["keys"]),
                tuple(int(n) for n in index["num_frames"]),
                tuple(tuple(int(x) for x in ls) for ls in index["labels"]),
            )
        except (TypeError, KeyError, ValueError) as e:
            raise DatabaseError(f"{self.path}: __index__ is missing or malformed ({type(e).__name__}: {e})") from None
        if not len(self.index.keys) == len(self.index.num_frames) == len(self.index.labels) == meta["num_videos"]:
            raise DatabaseError(f"{self.path}: __index__ and __meta__ disagree on the number of videos")
        n = int(meta.get("num_classes", 0))
        for key, labels in zip(self.index.keys, self.index.labels, strict=True):
            if any(not 0 <= x < n for x in labels):
                raise DatabaseError(f"{self.path}: record {key!r} has label(s) {list(labels)} outside its "
                                    f"{n} classes (0..{n - 1})")
        self.meta: dict[str, Any] = meta
        # what the database holds, not where or when it was built: its settings, classes, keys, labels, frame
        # counts and (the "content" digest) each frame's JPEG size, so re-running a build changes nothing
        not_content = ("created", "videoiq_version", "decode_loss")  # decode_loss also depends on --max-loss
        self.fingerprint = hashlib.sha256(msgpack.packb({k: v for k, v in meta.items() if k not in not_content})
                                          + bytes(raw_index or b"")).hexdigest()[:16]

    @property
    def nbytes(self) -> int:
        """Bytes of its ``data.mdb``."""
        return os.path.getsize(os.path.join(self.path, "data.mdb"))

    def read(self, i: int, frame_indices: list[int] | None = None) -> tuple[RecordHeader, list[bytes]]:
        """Header and JPEG bytes of frames ``frame_indices`` (all frames when None) of video ``i``."""
        key = self.index.keys[i]
        with open_readonly(self.path).begin(buffers=True) as txn:
            value = txn.get(key.encode())
            if value is None:
                raise RecordError(self.path, key, "listed in __index__ but missing from the database")
            header, start = decode_header(value, self.path, key)
            if header.num_frames != self.index.num_frames[i]:
                raise RecordError(self.path, key,
                                  f"has {header.num_frames} frames, __index__ says {self.index.num_frames[i]}")
            wanted = list(range(header.num_frames)) if frame_indices is None else list(frame_indices)
            bad = [j for j in wanted if not 0 <= j < header.num_frames]
            if bad:
                raise RecordError(self.path, key, f"frame indices {bad[:5]} outside 0..{header.num_frames - 1}")
            return header, split_frames(value, header, start, wanted)


def iter_keys(env: lmdb.Environment) -> Iterator[str]:
    """Every video key in an environment (reserved keys left out), in LMDB (byte) order."""
    with env.begin() as txn:
        for k in txn.cursor().iternext(keys=True, values=False):
            if not k.startswith(RESERVED_PREFIX.encode()):
                yield k.decode()


def forget(path: str) -> None:
    """Close this process's cached read-only environment of ``path`` (before writing to it)."""
    cached = _ENVS.pop(os.path.realpath(path), None)
    if cached is not None:
        cached[1].close()
