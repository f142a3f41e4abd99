"""Sharded splits: one split as a folder of videoiq LMDBs (``records.py``) plus a manifest; opening any split.

A split of hundreds of thousands of videos is built by many processes or nodes at once (each writes its
own shard) and may be spread over node-local disks (each node holds some shards). The folder::

    <split>.lmdb/
      manifest.json      {"format": "videoiq-shards", "version": 1, "meta": {...}, "shards": [...],
                          "index_sha256": str, "digest": str}
      index.msgpack      {"keys": [str], "num_frames": [int], "labels": [[int]]}: every video, shard by shard
      shard-00000.lmdb/  a videoiq LMDB holding a slice of the videos
      shard-00001.lmdb/  ...

``meta`` has the keys of a single LMDB's ``__meta__`` (classes, counts, skipped inputs, decode loss, the
build settings) for the whole split; each entry of ``shards`` is ``{"name", "videos", "frames", "bytes",
"fingerprint"}`` in index order. The index is the concatenation of the shards' own indexes, so a reader
(a Ray driver planning reads) needs the manifest and the index only, not the shards; a shard is opened
where its videos are read, and checked there against the manifest (present, whole, same fingerprint).
``digest`` covers everything else in the manifest: a hand-edited manifest is refused, not read as a
smaller dataset.

Where a node keeps its copy of a split at another path than the config names (node-local scratch disks),
``VIDEOIQ_PATH_MAP`` in that node's environment (``ray start``'s) maps it: ``SHARED=LOCAL`` pairs separated
by ``;``; a split under ``SHARED`` is read from the same place under ``LOCAL`` on that node.

:func:`open_split` opens either kind; both have the same reading interface (``path``, ``meta``, ``index``,
``fingerprint``, ``classes``, ``num_classes``, ``read``, ``nbytes``).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import msgpack

from .records import DatabaseError, RecordHeader, SplitView, VideoDB, VideoIndex

SHARDS_FORMAT = "videoiq-shards"
SHARDS_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.msgpack"
BUILD_PLAN = "build.json"  # present while a sharded build is planned or running (see ``shard_build.py``)
PATH_MAP_ENV = "VIDEOIQ_PATH_MAP"
# what a split holds, not where or when it was built (as for a single LMDB's fingerprint)
NOT_CONTENT = ("created", "videoiq_version", "decode_loss")


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.lmdb"


def local_path(path: str) -> str:
    """``path`` as this node sees it, after ``VIDEOIQ_PATH_MAP`` (unchanged when no pair's ``SHARED`` holds it)."""
    real = os.path.abspath(path)
    for pair in filter(None, os.environ.get(PATH_MAP_ENV, "").split(";")):
        shared, sep, local = pair.partition("=")
        if not sep or not shared or not local:
            raise DatabaseError(f"{PATH_MAP_ENV}: {pair!r} is not SHARED=LOCAL")
        shared = os.path.abspath(shared)
        if real == shared or real.startswith(shared.rstrip(os.sep) + os.sep):
            return os.path.join(os.path.abspath(local), os.path.relpath(real, shared))
    return path


def is_sharded(path: str) -> bool:
    """Whether ``path`` is a sharded split's folder (finished, or a build under way)."""
    here = local_path(path)
    return os.path.isfile(os.path.join(here, MANIFEST)) or os.path.isfile(os.path.join(here, BUILD_PLAN))


@dataclass(frozen=True)
class Shard:
    """One shard as the manifest lists it; ``start``: the index position of its first video."""

    name: str
    start: int
    videos: int
    frames: int
    bytes: int
    fingerprint: str

    def entry(self) -> dict[str, Any]:
        """Its manifest entry (``start`` follows from the order)."""
        return {k: v for k, v in asdict(self).items() if k != "start"}


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The digest of every field of a manifest but ``digest`` itself."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def split_fingerprint(meta: dict[str, Any], shards: list[dict[str, Any]]) -> str:
    """A sharded split's content fingerprint: its meta (less ``NOT_CONTENT``) and each shard's fingerprint."""
    body = {"meta": {k: v for k, v in meta.items() if k not in NOT_CONTENT},
            "shards": [(s["name"], s["fingerprint"]) for s in shards]}
    return hashlib.sha256(msgpack.packb(body)).hexdigest()[:16]


class ShardedSplit(SplitView):
    """A finished sharded split opened for reading: the manifest and index here, shards opened as they are read."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.local = local_path(self.path)
        manifest_file = os.path.join(self.local, MANIFEST)
        if not os.path.isfile(manifest_file):
            if os.path.isfile(os.path.join(self.local, BUILD_PLAN)):
                raise DatabaseError(f"{self.path}: sharded build not finished (no {MANIFEST} yet); re-run the same "
                                    "`videoiq data build` command to finish it")
            raise DatabaseError(f"{self.path}: no {MANIFEST} here (not a sharded split)")
        try:
            with open(manifest_file) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as e:
            raise DatabaseError(f"{manifest_file}: not readable JSON ({type(e).__name__}: {e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != SHARDS_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise DatabaseError(f"{manifest_file}: format {found!r}, expected {SHARDS_FORMAT!r}")
        if manifest.get("version") != SHARDS_VERSION:
            raise DatabaseError(f"{manifest_file}: version {manifest.get('version')!r}; this videoiq reads version "
                                f"{SHARDS_VERSION}. Rebuild it with this version's `videoiq data build`")
        if manifest.get("digest") != manifest_digest(manifest):
            raise DatabaseError(f"{manifest_file}: edited after the build (its digest does not match its content); "
                                "re-run the `videoiq data build` command that made it to write it again")
        index_file = os.path.join(self.local, INDEX_FILE)
        try:
            with open(index_file, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise DatabaseError(f"{index_file}: cannot be read ({e.strerror or e})") from None
        if hashlib.sha256(raw).hexdigest() != manifest["index_sha256"]:
            raise DatabaseError(f"{index_file}: not the index {MANIFEST} was written with (another build's, or "
                                "damaged); copy it again with the manifest")
        index = msgpack.unpackb(raw)
        self.index = VideoIndex(tuple(index["keys"]), tuple(index["num_frames"]),
                                tuple(tuple(ls) for ls in index["labels"]))
        self.meta: dict[str, Any] = manifest["meta"]
        starts = [0]
        for s in manifest["shards"]:
            starts.append(starts[-1] + s["videos"])
        self.shards = tuple(Shard(start=a, **s) for a, s in zip(starts[:-1], manifest["shards"], strict=True))
        self._starts = starts[:-1]
        self.fingerprint = split_fingerprint(self.meta, manifest["shards"])
        self._open: dict[int, VideoDB] = {}

    @property
    def nbytes(self) -> int:
        """Bytes of the shards' ``data.mdb`` files, as built."""
        return sum(s.bytes for s in self.shards)

    def shard_of(self, position: int) -> int:
        """The number of the shard that holds video ``position``."""
        return bisect.bisect_right(self._starts, position) - 1

    def shard_path(self, shard: Shard) -> str:
        """Where this process reads ``shard`` (under the split's folder as this node sees it)."""
        return os.path.join(self.local, shard.name)

    def missing_shards(self) -> list[str]:
        """Names of the shards this node does not hold (no ``data.mdb`` where :meth:`shard_path` points)."""
        return [s.name for s in self.shards if not os.path.isfile(os.path.join(self.shard_path(s), "data.mdb"))]

    def require_all_shards(self) -> None:
        """Refuse to read here unless this node holds every shard, each whole and of this build (readers that read
        the whole split in one place: a damaged shard stops them before the first batch, not in mid-epoch)."""
        missing = self.missing_shards()
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DatabaseError(f"{self.local}: {len(missing)} of {len(self.shards)} shards are missing here: "
                                f"{', '.join(missing[:3])}{more}; copy them from where the split was built")
        for number in range(len(self.shards)):
            self.open_shard(number)

    def open_shard(self, number: int) -> VideoDB:
        """Shard ``number``, opened once per process and checked against the manifest."""
        db = self._open.get(number)
        if db is None:
            shard = self.shards[number]
            path = self.shard_path(shard)
            if not os.path.isfile(os.path.join(path, "data.mdb")):
                raise DatabaseError(f"{self.path}: shard {shard.name} is missing (expected {path}); copy it from "
                                    "where the split was built")
            db = VideoDB(path)
            if db.fingerprint != shard.fingerprint or len(db) != shard.videos:
                raise DatabaseError(f"{path}: shard {shard.name} of another build (fingerprint {db.fingerprint}, "
                                    f"{len(db)} videos; {MANIFEST} lists {shard.fingerprint}, {shard.videos}); copy "
                                    "this split's shard, or re-run its `videoiq data build` command")
            self._open[number] = db
        return db

    def read(self, i: int, frame_indices: list[int] | None = None) -> tuple[RecordHeader, list[bytes]]:
        """Header and JPEG bytes of frames ``frame_indices`` (all when None) of video ``i`` of the split."""
        number = self.shard_of(i)
        return self.open_shard(number).read(i - self.shards[number].start, frame_indices)

    def __getstate__(self) -> dict[str, Any]:  # shipped to another process: its open shards stay behind
        return {**self.__dict__, "_open": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:  # ... and it reads where its own node keeps the split
        self.__dict__.update(state)
        self.local = local_path(self.path)


VideoSet = VideoDB | ShardedSplit


def open_split(path: str | os.PathLike) -> VideoSet:
    """The split at ``path``: a sharded split's folder (a manifest) or a single videoiq LMDB."""
    path = os.fspath(path)
    return ShardedSplit(path) if is_sharded(path) else VideoDB(local_path(path))
