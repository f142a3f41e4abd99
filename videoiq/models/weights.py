"""Loading full-precision, torchvision-format weights into videoiq models, strictly.

One rule maps a model key to the key of a full-precision (torchvision-layout) state dict: drop the
switchable-BN level ``.bn.<bits>``. So one function loads a torchvision ResNet into the FP model,
loads an FP ResNet into the any-precision model (every width's BN gets a copy of the FP BN; spec
3.4), and loads a torchvision MobileNetV2 into ours. Only these target keys may stay at their
initial values: PACT clips (they have no FP counterpart), the classifier when ``load_head=False``
(a new class count), and ``num_batches_tracked`` counters that older files lack. Any other missing,
unexpected or mis-shaped key is an error that names it: nothing is loaded with ``strict=False``.

Files are read with ``torch.load(weights_only=True)``: no pickled code is ever executed.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import MissingFileError, VideoiqError

_SWITCHABLE_BN = re.compile(r"\.bn\.\d+\.")
_PACT_CLIP = re.compile(r"(^|\.)alpha\.(\d+|shared)$")
_BN_COUNTER = "num_batches_tracked"
_HEADS = ("fc.", "classifier.")
_SHOWN = 8


class WeightLoadError(VideoiqError, ValueError):
    """A weight file or state dict that does not fit the model; the message names the keys."""


@dataclass
class LoadReport:
    """What a load did: keys copied, target keys left at their init, source keys not used."""

    source: str
    loaded: list[str] = field(default_factory=list)
    kept_init: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.source}: loaded {len(self.loaded)} tensors, kept {len(self.kept_init)} at init "
            f"({_sample(self.kept_init)}), ignored {len(self.ignored)} ({_sample(self.ignored)})"
        )


def _sample(keys: list[str]) -> str:
    more = f", ... {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more if keys else "none"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a flat ``{name: tensor}`` state dict (torchvision's weight-file format) from a local file."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"pretrained weights file {str(p)!r} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise WeightLoadError(
            f"{p}: not a loadable tensor state dict (read with weights_only=True, so pickled code is "
            f"refused): {str(e).splitlines()[0]}"
        ) from e
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        kind = type(obj).__name__
        keys = list(obj)[:5] if isinstance(obj, Mapping) else []
        raise WeightLoadError(
            f"{p}: expected a flat state dict of tensors (torchvision's format), got a {kind} "
            f"with keys {keys}; videoiq stage checkpoints are loaded with videoiq's checkpoint reader"
        )
    return dict(obj)


def fp_source_key(key: str) -> str | None:
    """The full-precision state-dict key a model key is loaded from, or ``None`` if it has none."""
    if _PACT_CLIP.search(key):
        return None
    return _SWITCHABLE_BN.sub(".", key)


def load_fp_weights(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str, load_head: bool
) -> LoadReport:
    """Copy a full-precision state dict into ``model`` (FP or any-precision), strictly.

    Args:
        model: the model to fill.
        state_dict: torchvision-layout weights (e.g. :func:`read_state_dict` of an ImageNet file).
        source: a name for messages (the file path).
        load_head: also copy the classifier (``fc``/``classifier``); ``False`` keeps the model's
            fresh classifier and ignores the source's, e.g. for a new number of classes.

    Raises:
        WeightLoadError: naming every missing, unexpected or mis-shaped key.
    """
    target = model.state_dict()
    report = LoadReport(source)
    new_state: dict[str, Tensor] = {}
    used: set[str] = set()
    missing, mismatched = [], []
    for key, value in target.items():
        src = fp_source_key(key)
        is_head = key.startswith(_HEADS)
        if src is None or (is_head and not load_head):
            report.kept_init.append(key)
            new_state[key] = value
            continue
        if src not in state_dict:
            if key.endswith(_BN_COUNTER):
                report.kept_init.append(key)
                new_state[key] = value
            else:
                missing.append(key if src == key else f"{key} (from {src})")
            continue
        tensor = state_dict[src]
        if tensor.shape != value.shape:
            mismatched.append(f"{src}: file {tuple(tensor.shape)} vs model {tuple(value.shape)}")
            used.add(src)  # reported as mis-shaped, not again as unexpected
            continue
        new_state[key] = tensor.to(value.dtype)
        used.add(src)
        report.loaded.append(key)
    ignorable = [k for k in state_dict if k not in used and (k.startswith(_HEADS) and not load_head)]
    unexpected = [k for k in state_dict if k not in used and k not in ignorable]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model keys have no weights in the file: {_sample(missing)}")
    if mismatched:
        heads = any(m.startswith(_HEADS) for m in mismatched)
        hint = "; load_head=False keeps a fresh classifier for a new class count" if heads else ""
        problems.append(f"{len(mismatched)} shapes differ: {_sample(mismatched)}{hint}")
    if unexpected:
        problems.append(f"{len(unexpected)} file keys match nothing in the model: {_sample(unexpected)}")
    if problems:
        raise WeightLoadError(f"cannot load {source} into {type(model).__name__}: " + "; ".join(problems))
    report.ignored = ignorable
    model.load_state_dict(new_state, strict=True)
    return report


def load_fp_weights_file(model: nn.Module, path: str | Path, *, load_head: bool) -> LoadReport:
    """:func:`load_fp_weights` from a local torchvision-format file (e.g. ImageNet ResNet-50)."""
    return load_fp_weights(model, read_state_dict(path), source=str(path), load_head=load_head)
