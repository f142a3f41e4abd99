"""What a training stage's checkpoints were built from (their lineage), and what happens to a run folder whose
newest checkpoint was built from something other than what the config now asks for.

Every checkpoint a training stage writes records, besides its own ``id``::

    "lineage": {"config": {"optim.lr": 0.01, ...},      # the settings that shape the weights, dotted keys
                "inputs": {"init.backbone_checkpoint": {"id", "stage", "epoch", "path"},
                           "init.imagenet_weights": {"sha256", "path"}, ...},
                "data": {"train": {"path", "fingerprint", "videos", "frames", "classes"}, "val": {...}}}

Settings that do not shape the weights, or that the inputs' identities already cover, are left out: where the
data and input files are (``data.root``, ``init.*``), how fast or how visibly it runs (``speed``, ``logging``,
``ray``, ``data.num_workers``, ``data.decoder``) and ``optim.epochs``, so that raising the epochs goes on
training the same run.

Before a stage trains into a run folder that already has a checkpoint, :func:`check_run` compares that
record with the current config's. ``run.changed_inputs`` says what a difference does: ``refuse`` (the default)
stops with one line naming every change; ``retrain`` moves the old run folder aside, to
``<name>.replaced-<UTC time>``, and trains from scratch; ``keep`` goes on from the old checkpoint as it is.
Checkpoints written before lineage was recorded are taken as they are.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import StageConfig, config_to_dict
from ..data.shards import VideoSet
from ..errors import first_few
from .checkpoint import CheckpointError, checkpoint_identity, file_sha256, latest_checkpoint
from .stage_data import StageData

# dotted keys (or whole sections, with a trailing dot) that do not enter the identity of a run
NOT_IDENTITY = ("optim.epochs", "optim.val_every", "data.root", "data.num_workers", "data.decoder",
                "data.on_error", "init.", "run.", "ray.", "logging.", "speed.", "eval.")
INPUT_FILES = ("backbone_checkpoint", "policy_backbone_checkpoint", "imagenet_weights")


class LineageError(CheckpointError):
    """A run folder whose checkpoint was built from other inputs than the config asks for."""


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def identity_config(cfg: StageConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that shape a stage's weights, as ``{dotted key: value}``."""
    flat = _flatten(config_to_dict(cfg))
    return {k: v for k, v in flat.items() if not any(k == x or (x.endswith(".") and k.startswith(x))
                                                     for x in NOT_IDENTITY)}


def database_identity(db: VideoSet) -> dict[str, Any]:
    """What a stage records about one of its databases: where, its fingerprint, counts and classes."""
    return {"path": os.path.abspath(db.path), "fingerprint": db.fingerprint, "videos": len(db),
            "frames": int(db.meta.get("num_frames", 0)), "classes": db.classes}


def stage_lineage(cfg: StageConfig, data: StageData) -> dict[str, Any]:
    """The lineage a checkpoint of ``cfg``'s stage records: its identity config, input files and ``data``'s
    databases."""
    inputs: dict[str, Any] = {}
    for key in INPUT_FILES:
        source = getattr(cfg.init, key, None)
        if not source:
            continue
        if key == "imagenet_weights":
            inputs[f"init.{key}"] = {"sha256": file_sha256(source), "path": os.path.abspath(source)}
        else:
            inputs[f"init.{key}"] = checkpoint_identity(source, what=f"init.{key}")
    dbs = {"train": data.train, "val": data.val}
    return {"config": identity_config(cfg), "inputs": inputs,
            "data": {split: database_identity(db) for split, db in dbs.items() if db is not None}}


def _ident(entry: dict[str, Any] | None) -> str | None:
    """What identifies an input file: a checkpoint's id, or a weights file's SHA-256."""
    return None if entry is None else entry.get("id", entry.get("sha256"))


def _input_text(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "none"
    if "sha256" in entry:
        return f"{entry['path']} (sha256 {entry['sha256'][:12]})"
    return f"{entry['stage']} checkpoint {entry['id'][:12]} after epoch {entry['epoch']} ({entry['path']})"


def changes(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's lineage and the current one, one phrase each (``[]``: the same, or
    a checkpoint from before lineage was recorded)."""
    if not recorded:
        return []
    out = []
    before, now = recorded.get("config", {}), current["config"]
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            out.append(f"{key} {before.get(key)!r} -> {now.get(key)!r}")
    before, now = recorded.get("inputs", {}), current["inputs"]
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if _ident(old) != _ident(new):
            out.append(f"{key} {_input_text(old)} -> {_input_text(new)}")
    for split, new in current["data"].items():
        old = recorded.get("data", {}).get(split)
        if old is None or old["fingerprint"] == new["fingerprint"]:
            continue
        if old["classes"] != new["classes"]:
            out.append(f"{split} data: {len(old['classes'])} classes ({first_few(old['classes'])}) -> "
                       f"{len(new['classes'])} ({first_few(new['classes'])})")
        else:
            out.append(f"{split} data rebuilt or replaced: {old['path']} ({old['videos']} videos, {old['frames']} "
                       f"frames) -> {new['path']} ({new['videos']} videos, {new['frames']} frames)")
    return out


def check_run(cfg: StageConfig, run_dir: str | os.PathLike, data: StageData,
              printer: Callable[[str], None] = print) -> tuple[dict[str, Any], tuple[Path, dict[str, Any]] | None]:
    """Before training ``cfg`` into ``run_dir``: compare its newest checkpoint's lineage with ``cfg``'s and do
    what ``run.changed_inputs`` says (see the module's docstring). Returns the current lineage, for the
    stage's checkpoints to record, and the newest checkpoint the run goes on from (as
    :func:`~videoiq.train.checkpoint.latest_checkpoint` gives it; None when there is none or it was moved aside)."""
    current = stage_lineage(cfg, data)
    found = latest_checkpoint(run_dir)
    if found is None:
        return current, None
    path, ckpt = found
    differences = changes(ckpt.get("lineage"), current)
    if not differences:
        return current, found
    what = f"{cfg.STAGE}: {path} was trained from other inputs than this config's: " + "; ".join(differences)
    mode = cfg.run.changed_inputs
    classes_changed = ckpt["extra"].get("classes") not in (None, current["data"]["train"]["classes"])
    if mode == "refuse" or (mode == "keep" and classes_changed):
        why = (" (it cannot go on: its classifier has other classes)" if mode == "keep" else "")
        raise LineageError(f"{what}{why}. Set run.changed_inputs=retrain to train it again from scratch (the old run "
                           "folder is moved aside, not deleted), run.changed_inputs=keep to go on from it as it is, "
                           "or train in another run folder (run.name)")
    if mode == "keep":
        printer(f"{what}; going on from it as it is (run.changed_inputs=keep)")
        return current, found
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = Path(run_dir).with_name(f"{Path(run_dir).name}.replaced-{stamp}")
    os.rename(run_dir, aside)
    printer(f"{what}; training it again from scratch (run.changed_inputs=retrain); the old run is now {aside}")
    return current, None
