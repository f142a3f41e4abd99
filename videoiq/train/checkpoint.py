"""One checkpoint format for every stage: written atomically, read with ``weights_only=True``, checked on load.

A checkpoint is a dict that ``torch.load(weights_only=True)`` can read (tensors, numbers, strings,
lists and dicts only; no pickled classes)::

    {"format": "videoiq-ckpt/1", "id": 16 hex digits, new for every file written,
     "stage": "fp" | "ap" | "policy_pretrain" | "policy",
     "epoch": completed epochs, "config": the stage config as a dict, "lineage": what it was built from,
     "models": {role: {"name": registry name, "kwargs": builder arguments, "state_dict": {...}}},
     "optimizer": ..., "scheduler": ..., "metrics": {...}, "extra": {...}, "versions": {...}}

Roles: ``model`` (what the stage trains; for ``policy`` the any-precision backbone), ``teacher``
(the frozen full-precision model, ap and policy), ``policy`` (the policy network). Each role carries
the registry name and arguments that rebuild it, so a checkpoint alone is enough to rebuild its models
(:func:`load_role`, :func:`videoiq_from_checkpoint`), and the precision family of an ap backbone is read from it,
never guessed. The ``id`` is what later stages record as their input (see ``lineage.py``), so that a checkpoint
rewritten in place is told apart.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..config import plain
from ..errors import VideoiqError
from ..models import VideoIQ, create_model

FORMAT = "videoiq-ckpt/1"
log = logging.getLogger("videoiq.train")
FILENAME = "checkpoint.pt"


class CheckpointError(VideoiqError, ValueError):
    """A checkpoint that is missing, unreadable, of another format or stage, or that does not fit."""


class StorageError(VideoiqError, RuntimeError):
    """A run folder that cannot be written, or lacks the space for the stage's checkpoints."""


def model_entry(name: str, kwargs: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """The checkpoint entry of one model: how to rebuild it and its weights (unwrapped, on the CPU)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"name": name, "kwargs": plain(kwargs), "state_dict": state}


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a crash or a full disk mid-write leaves the previous
    file intact (the new one is written beside it, synced, then renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "id": secrets.token_hex(8), **payload,
               "versions": {"videoiq": __version__, "torch": str(torch.__version__)}}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = "the previous checkpoint there is intact" if path.exists() else "nothing was written"
            raise StorageError(f"cannot write checkpoint {path}: {e.strerror or e}; {kept}") from e
        raise


def state_bytes(modules: Iterable[nn.Module], optimizer: torch.optim.Optimizer | None = None) -> int:
    """About how many bytes a checkpoint of these models (and the optimizer's momentum) takes."""
    size = sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values())
    if optimizer is not None:  # SGD momentum: one buffer per trainable parameter
        size += sum(p.numel() * p.element_size() for g in optimizer.param_groups for p in g["params"])
    return size


def check_storage(folder: str | os.PathLike, need_bytes: int = 0, what: str = "run.storage_path") -> None:
    """Fail before training, naming ``what``, when ``folder`` cannot be written or has less than
    ``need_bytes`` free (instead of failing at the first checkpoint, an epoch later)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(b"videoiq")
            f.flush()
            os.fsync(f.fileno())
        os.unlink(probe)
    except OSError as e:
        raise StorageError(f"{what}: cannot write to {folder} ({e.strerror or e})") from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise StorageError(f"{what}: {folder} has {free / 2**20:.0f} MiB free; this stage's checkpoints need "
                           f"about {need_bytes / 2**20:.0f} MiB")


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file from a file, a checkpoint directory or a run directory: ``path`` itself,
    ``path/checkpoint.pt``, or else the newest complete ``path/checkpoint_*/checkpoint.pt`` of a Ray run
    (their names sort by time; a torch checkpoint is a zip archive, and one cut short is not)."""
    p = Path(path)
    if not p.is_dir():
        return p
    candidates = [p / FILENAME, *sorted(p.glob(f"checkpoint_*/{FILENAME}"), reverse=True)]
    return next((c for c in candidates if c.is_file() and zipfile.is_zipfile(c)), p / FILENAME)


def load_checkpoint(path: str | os.PathLike, stages: Iterable[str] | None = None,
                    what: str = "checkpoint", mmap: bool = False) -> dict[str, Any]:
    """Read and check a checkpoint; ``stages`` are those accepted, and ``what`` names the config key for errors.
    With ``mmap`` the tensors stay in the file until used (cheap when only the metadata is wanted)."""
    p = resolve(path)
    if not p.is_file():
        raise CheckpointError(f"{what}: {str(path)!r} does not exist")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # pickle refusals, truncation and foreign files all surface here
        raise CheckpointError(f"{what}: {str(p)!r} is not a readable videoiq checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        weights_only = isinstance(ckpt, dict) and "format" not in ckpt
        hint = " (a plain weight file? use init.imagenet_weights for torchvision weights)" if weights_only else ""
        raise CheckpointError(f"{what}: {str(p)!r} has format {found!r}, expected {FORMAT!r}{hint}")
    allowed = tuple(stages) if stages is not None else None
    if allowed is not None and ckpt.get("stage") not in allowed:
        raise CheckpointError(f"{what}: {str(p)!r} is a {ckpt.get('stage')!r}-stage checkpoint; "
                              f"expected {' or '.join(map(repr, allowed))}")
    return ckpt


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def checkpoint_identity(path: str | os.PathLike, what: str = "checkpoint",
                        ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"id", "stage", "epoch", "path"}`` of a checkpoint (file, or run folder: its newest), what a stage built
    on it records; ``ckpt`` is its content when the caller has already loaded it. A checkpoint from before ids
    were written is known by the SHA-256 of its file."""
    p = resolve(path)
    if ckpt is None:
        ckpt = load_checkpoint(p, what=what, mmap=True)
    ident = ckpt.get("id")
    if ident is None:
        ident = "sha256:" + file_sha256(p)
    return {"id": ident, "stage": ckpt.get("stage"), "epoch": int(ckpt.get("epoch", 0)), "path": str(p.resolve())}


def build_from_entry(entry: dict[str, Any], role: str, source: str) -> nn.Module:
    """Rebuild a model from its checkpoint entry and load its weights strictly."""
    try:
        model = create_model(entry["name"], **entry["kwargs"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: cannot rebuild its {role} ({type(e).__name__}: {e})") from None
    try:
        model.load_state_dict(entry["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: its {role} weights do not fit {entry['name']}: "
                              f"{str(e).splitlines()[0]}") from None
    return model


def load_role(ckpt: dict[str, Any], role: str, source: str) -> nn.Module:
    """The model in role ``role`` of a loaded checkpoint."""
    entry = ckpt.get("models", {}).get(role)
    if entry is None:
        raise CheckpointError(f"{source}: a {ckpt.get('stage')!r} checkpoint without a {role!r} model")
    return build_from_entry(entry, role, source)


def videoiq_from_checkpoint(ckpt: dict[str, Any], source: str) -> VideoIQ:
    """The VideoIQ model of a ``policy`` checkpoint (backbone, policy and teacher as trained)."""
    teacher = load_role(ckpt, "teacher", source) if "teacher" in ckpt["models"] else None
    return VideoIQ(load_role(ckpt, "model", source), load_role(ckpt, "policy", source),
                   precisions=tuple(ckpt["extra"]["precisions"]), teacher=teacher,
                   fp_action=ckpt["extra"]["actions"][0] == "fp")


def latest_checkpoint(run: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint with the most epochs in a run directory, and its content (memory-mapped: its metadata is
    read, its tensors only when used): ``checkpoint.pt`` of an in-process run, or the newest of a Ray run's
    ``checkpoint_*/checkpoint.pt``; ``None`` if it has none."""
    best = None
    for path in [Path(run) / FILENAME, *sorted(Path(run).glob(f"checkpoint_*/{FILENAME}"))]:
        if not path.is_file():
            continue
        try:
            ckpt = load_checkpoint(path, what="resume", mmap=True)
        except CheckpointError as e:  # a copy cut short when its run was killed; Ray never registered it
            log.warning("skipping %s", e)
            continue
        if best is None or ckpt["epoch"] > best[1]["epoch"]:
            best = (path, ckpt)
    return best
