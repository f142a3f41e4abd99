"""Read what an offline wandb run recorded, without the network or a wandb server (test helper).

An offline run is ``<dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb``: a 7-byte header (``:W&B``,
magic, version) then LevelDB-log records in 32 KiB blocks, each ``crc32c (4) | length (2, LE) | type
(1)`` followed by a chunk of a serialized ``wandb_internal_pb2.Record``; records longer than a block
are split into FIRST/MIDDLE/LAST chunks. This relies on wandb's private file format (wandb 0.31), so
the project's own ``metrics.jsonl`` stays the record the product depends on.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(path: Path):
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the block's tail is too short for a record header: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


@dataclass
class OfflineRun:
    """One offline run: its identity, config, history rows and summary."""

    path: Path
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(run_dir: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    (file,) = Path(run_dir).glob("run-*.wandb")
    run = OfflineRun(Path(run_dir))
    for payload in _payloads(file):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.name, run.group, run.job_type = r.run_id, r.display_name, r.run_group, r.job_type
            run.config.update({_key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    return run


def read_runs(directory: Path) -> list[OfflineRun]:
    """Every offline run under ``directory`` (searched recursively), oldest first."""
    return [read_run(d) for d in sorted(Path(directory).rglob("offline-run-*"), key=lambda d: d.name)]
