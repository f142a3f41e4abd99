"""From a database record to a training or evaluation sample; the plain PyTorch ``Dataset`` over an LMDB.

One :class:`ClipSpec` says how clips are made (segments, crops, decoder, error policy); the two steps,
:func:`read_clip` (pick frame indices, slice their JPEG bytes out of the record) and
:func:`decode_clip` (decode, transform, stack views), are shared by :class:`VideoClipDataset` and the
Ray Data pipeline (``videoiq.ray.data``), so both give the same samples.

A sample is a dict:

* ``video``: uint8 ``(T, 3, S, S)`` in training, ``(V, T, 3, S, S)`` in evaluation, where
  ``T = segments * frames_per_segment`` and ``V = num_clips * num_crops`` views whose logits are averaged;
* ``label``: int64 class id (the first label of a multi-label video; -1 when the record has none);
* ``index``: int64 position of the video in the database's ``__index__`` (its key and every label);
* ``valid``: bool, False only for a bad record skipped under ``on_error="skip"`` (its video is zeros).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .codec import DECODERS, Decoder, FrameError, decode_jpeg, jpeg_size
from .records import DatabaseError, RecordError
from .sampling import SegmentOffsets, eval_indices, train_indices
from .shards import ShardedSplit, VideoSet, open_split
from .transforms import EvalTransform, TrainTransform

log = logging.getLogger("videoiq.data")
OnError = Literal["fail", "skip"]


@dataclass(frozen=True)
class ClipSpec:
    """How a clip is cut from a video and turned into pixels."""

    train: bool
    segments: int = 16
    frames_per_segment: int = 1
    size: int = 224
    scale_size: int = 224  # eval: short side before cropping (size / 0.875 with scale-up)
    num_clips: int = 1
    num_crops: int = 1
    offsets: SegmentOffsets = "independent"
    decoder: Decoder = "simplejpeg"
    on_error: OnError = "fail"
    min_frames: int = 0  # training videos with fewer frames are left out (the original's filter_video)

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {self.on_error!r}")

    @property
    def frames(self) -> int:
        return self.segments * self.frames_per_segment

    @property
    def views(self) -> int:
        return 1 if self.train else self.num_clips * self.num_crops

    @property
    def sample_shape(self) -> tuple[int, ...]:
        clip = (self.frames, 3, self.size, self.size)
        return clip if self.train else (self.views, *clip)

    @classmethod
    def from_config(cls, data: Any, train: bool, num_clips: int = 1, num_crops: int = 1) -> "ClipSpec":
        """The spec for a stage config's ``data`` section (``num_clips``/``num_crops`` from its eval section)."""
        from .specs import dataset_spec

        return cls(
            train=train, segments=data.num_frames, frames_per_segment=data.frames_per_segment,
            size=data.input_size,
            scale_size=int(round(data.input_size / 0.875)) if data.scale_up else data.input_size,
            num_clips=1 if train else num_clips, num_crops=1 if train else num_crops,
            offsets=data.segment_offsets, decoder=data.decoder, on_error=data.on_error,
            min_frames=dataset_spec(data.dataset).min_train_frames if train else 0,
        )


def clip_indices(spec: ClipSpec, num_frames: int, rng: np.random.Generator) -> list[int]:
    """The frame indices of every view's clip, concatenated clip by clip."""
    if spec.train:
        return train_indices(num_frames, spec.segments, spec.frames_per_segment, rng, spec.offsets).tolist()
    return np.concatenate([eval_indices(num_frames, spec.segments, spec.frames_per_segment, c, spec.num_clips)
                           for c in range(spec.num_clips)]).tolist()


def read_clip(db: VideoSet, position: int, spec: ClipSpec, rng: np.random.Generator) -> list[bytes]:
    """JPEG bytes of the sampled frames of video ``position`` (only those frames leave the record)."""
    _, jpegs = db.read(position, clip_indices(spec, db.index.num_frames[position], rng))
    return jpegs


def decode_clip(spec: ClipSpec, jpegs: list[bytes], rng: np.random.Generator, db: str = "",
                key: str = "", out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 pixels of a clip from its JPEG bytes, transformed per ``spec`` (shape ``spec.sample_shape``),
    written into ``out`` when given (the Ray stage's slot of its batch). Every frame must be the size of the first."""
    frames = _decode_frames(spec.decoder, jpegs, db, key)
    # a channels-last view of the decoded pixels: the layout the uint8 resize's fast path works in
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2)
    if spec.train:
        return TrainTransform(spec.size)(clip, rng, out)
    crop = EvalTransform(spec.size, spec.scale_size, spec.num_crops)
    if out is None:
        out = torch.empty(spec.sample_shape, dtype=torch.uint8)
    for views, part in zip(out.split(spec.num_crops), clip.split(spec.frames), strict=True):
        crop(part, out=views)  # each clip's crops, clip by clip
    return out


def _decode_frames(decoder: Decoder, jpegs: list[bytes], db: str, key: str) -> np.ndarray:
    """``(N, H, W, 3)`` pixels of a clip's frames, the first frame's size, decoded into this thread's
    scratch array: valid until its next call, so nothing returned from :func:`decode_clip` may view it."""
    frames = np.empty(0, np.uint8)
    for j, data in enumerate(jpegs):
        try:
            if j == 0:
                frames = _scratch_frames(len(jpegs), *jpeg_size(data, decoder))
            decode_jpeg(data, decoder, out=frames[j])
        except FrameError as e:
            raise RecordError(db, key, f"sampled frame {j}: {e}") from None
    return frames


_SCRATCH = threading.local()


def _scratch_frames(n: int, height: int, width: int) -> np.ndarray:
    """An ``(n, height, width, 3)`` uint8 array over this thread's buffer, grown when too small. One buffer
    reused clip after clip stays in cache: decoding 16 frames of 256x256 into it took 4.6 ms, into a
    fresh array 5.1, and stacking an array per frame (what this replaces) cost 1.5 ms more."""
    need = n * height * width * 3
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.size < need:
        buffer = _SCRATCH.buffer = np.empty(need, np.uint8)
    return buffer[:need].reshape(n, height, width, 3)


def primary_label(labels: tuple[int, ...]) -> int:
    return labels[0] if labels else -1


def invalid_sample(spec: ClipSpec, position: int, error: Exception) -> dict[str, Any]:
    """The placeholder for a bad record skipped under ``on_error="skip"`` (logged with its reason)."""
    log.warning("skipping bad record: %s", error)
    return {"video": torch.zeros(spec.sample_shape, dtype=torch.uint8), "label": torch.tensor(-1),
            "index": torch.tensor(position), "valid": torch.tensor(False)}


class VideoClipDataset(torch.utils.data.Dataset):
    """Map-style dataset of clips from a videoiq LMDB; the no-Ray path and the benchmark baseline.

    Each DataLoader worker opens the database itself (read-only, no lock). Training randomness comes
    from a per-sample generator seeded by ``(seed, epoch, index)``; call :meth:`set_epoch` each epoch
    for fresh clips that are still reproducible.
    """

    def __init__(self, db: VideoSet | str, spec: ClipSpec, seed: int = 0):
        self.db = open_split(db) if isinstance(db, str) else db
        if isinstance(self.db, ShardedSplit):
            self.db.require_all_shards()  # it reads the whole split here: a missing or damaged shard stops it now
        self.spec, self.seed, self.epoch = spec, seed, 0
        counts = self.db.index.num_frames
        self.positions = ([i for i, n in enumerate(counts) if n >= spec.min_frames] if spec.train
                          else list(range(len(counts))))
        if not self.positions:
            raise DatabaseError(f"{self.db.path}: no videos to read (of {len(counts)}, none has >= {spec.min_frames} "
                                "frames)")

    def __len__(self) -> int:
        return len(self.positions)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, item: int) -> dict[str, Any]:
        position = self.positions[item]
        rng = np.random.default_rng([self.seed, self.epoch, position])
        try:
            video = decode_clip(self.spec, read_clip(self.db, position, self.spec, rng), rng,
                                self.db.path, self.db.index.keys[position])
        except RecordError as e:
            if self.spec.on_error == "fail":
                raise
            return invalid_sample(self.spec, position, e)
        return {"video": video, "label": torch.tensor(primary_label(self.db.index.labels[position])),
                "index": torch.tensor(position), "valid": torch.tensor(True)}


def eval_loader(dataset: VideoClipDataset, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
    """Evaluation batches in database order. The loader has its own generator: a ``DataLoader`` without one
    draws its workers' seed from the global RNG, which the policy's Gumbel noise also draws from, so how
    often a stage validates would change what it learns."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                       generator=torch.Generator())
