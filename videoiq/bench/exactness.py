"""``videoiq bench exactness``: how far the int8 engine's logits are from fake quantization's, per width.

On an ap or policy checkpoint's backbone and its validation videos (``--checkpoint`` and ``--data``), or on
a random any-precision ResNet whose BatchNorm statistics come from its own activations at every width (the
default statistics would leave most activations clipped). For each width it prints, over the frames:

* the largest and the median relative difference of the logits (``max |a - b| / max |b|`` per frame), and
  the share of frames within :data:`TOLERANCE`,
* the share of frames whose top class is the same, and, on a checkpoint, the top-1 of both on the videos;
* the same differences between fake quantization and itself with the convolutions in channels-last
  memory format: float rounding alone, the floor any second implementation meets.

Where a value falls within float rounding of a rounding boundary, one code can differ and later layers see
that input (``videoiq/models/int8.py``); how much a network amplifies that depends on its weights.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from ..errors import UsageError
from ..models import Int8ResNet, create_model
from ..models.resnet import ResNet, fold_frames
from ..quant import bit_width, bit_widths_of, clip_parameters
from .common import print_table, setting_line

TOLERANCE = 1e-3
"""The relative logit difference the share of frames within is reported for."""


def calibrated_model(backbone: str, size: int, classes: int = 200, seed: int = 0, **quant: Any) -> ResNet:
    """A random ap ResNet (``quant``: its builder's quantization keywords) with clips drawn from [0.5, 4] and
    BN statistics of its own activations at every width."""
    torch.manual_seed(seed)
    model = create_model(backbone, num_classes=classes, **quant)
    g = torch.Generator().manual_seed(seed + 1)
    for clips in clip_parameters(model).values():
        for p in clips:
            p.data.fill_(float(torch.empty(()).uniform_(0.5, 4.0, generator=g)))
    video = torch.randn(2, 4, 3, size, size, generator=g)
    model.train()
    with torch.no_grad():
        for bits in bit_widths_of(model) or ():
            with bit_width(model, bits):
                for _ in range(2):
                    model(video)
    return model.eval()


def _checkpoint_model(checkpoint: str, data_root: str) -> tuple[ResNet, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The backbone of an ap or policy checkpoint and its validation clips ``[(video, label)]`` in batches."""
    from ..config import config_from_dict
    from ..data.clips import ClipSpec, VideoClipDataset, eval_loader
    from ..data.transforms import normalize
    from ..train.checkpoint import load_checkpoint, load_role

    ckpt = load_checkpoint(checkpoint, stages=("ap", "policy"), what="--checkpoint")
    cfg = config_from_dict(ckpt["config"], checkpoint)
    cfg.data.root = data_root
    spec = ClipSpec.from_config(cfg.data, train=False)
    val = VideoClipDataset(cfg.data.lmdb_path(cfg.data.val_split), spec)
    # evaluation clips are (B, views, T, C, H, W); with one clip and one crop there is one view
    batches = [(normalize(b["video"][:, 0]), b["label"]) for b in eval_loader(val, 16, 0)]
    return load_role(ckpt, "model", checkpoint).eval(), batches


def _logits(model: ResNet, frames: torch.Tensor, bits: int, channels_last: bool = False) -> torch.Tensor:
    with torch.no_grad(), bit_width(model, bits):
        if channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        return model.fc(model.frame_features(frames))


def _relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row: ``max |a - b| / max |b|``."""
    return (a - b).abs().amax(dim=1) / b.abs().amax(dim=1).clamp_min(1e-12)


def bench_exactness(backbone: str = "ap_resnet50", size: int = 224, frames: int = 16, checkpoint: str = "",
                    data_root: str = "", threads: int = 0) -> dict[int, dict[str, float]]:
    """Print and return, per width: ``max_rel``, ``median_rel``, ``within``, ``same_top``, ``floor_max_rel``,
    ``floor_median_rel``, ``floor_within`` (and ``top1_fake``, ``top1_int8`` on a checkpoint's videos)."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if checkpoint:
        if not data_root:
            raise UsageError("--checkpoint needs --data: the data root whose validation split it scores")
        model, batches = _checkpoint_model(checkpoint, data_root)
        what = f"{checkpoint} on {sum(len(v) for v, _ in batches)} validation videos of {data_root}"
    else:
        model = calibrated_model(backbone, size)
        g = torch.Generator().manual_seed(2)
        batches = [(torch.randn(1, frames, 3, size, size, generator=g), torch.zeros(1, dtype=torch.long))]
        what = f"random {backbone} (BN statistics of its own activations), {frames} frames at {size}x{size}"
    engine = Int8ResNet(model)
    slower = copy.deepcopy(model).to(memory_format=torch.channels_last)
    print("videoiq bench exactness: the int8 engine's logits vs fake quantization's, per width")
    print(f"  {what}")
    print(f"  {setting_line('cpu', threads)}")
    table: dict[int, dict[str, float]] = {}
    for bits in bit_widths_of(model) or ():
        rel, floor, same, hits = [], [], [], {"fake": 0, "int8": 0}
        for video, label in batches:
            flat, b, t = fold_frames(video, "exactness")
            fake = _logits(model, flat, bits)
            with torch.no_grad():
                got = model.fc(engine.frame_features(flat, bits))
            rel.append(_relative(got, fake))
            floor.append(_relative(_logits(slower, flat, bits, channels_last=True), fake))
            same.append(got.argmax(1) == fake.argmax(1))
            for name, logits in (("fake", fake), ("int8", got)):
                hits[name] += int((logits.view(b, t, -1).mean(1).argmax(1) == label).sum())
        r, f = torch.cat(rel), torch.cat(floor)
        row = {"max_rel": float(r.max()), "median_rel": float(r.median()), "within": 100 * float((r <= TOLERANCE)
                                                                                                 .float().mean()),
               "same_top": 100 * float(torch.cat(same).float().mean()), "floor_max_rel": float(f.max()),
               "floor_median_rel": float(f.median()), "floor_within": 100 * float((f <= TOLERANCE).float().mean())}
        if checkpoint:
            videos = sum(len(v) for v, _ in batches)
            row.update(top1_fake=100 * hits["fake"] / videos, top1_int8=100 * hits["int8"] / videos)
        table[bits] = row
    print()
    header = ["width", "max rel. diff", "median rel. diff", f"<= {TOLERANCE:g} %", "same top class %", "floor: max",
              "floor: median", f"floor: <= {TOLERANCE:g} %"]
    if checkpoint:
        header += ["top-1 fake quant", "top-1 int8"]
    rows = [[f"{bits} bits", f"{r['max_rel']:.1e}", f"{r['median_rel']:.1e}", f"{r['within']:.2f}",
             f"{r['same_top']:.2f}", f"{r['floor_max_rel']:.1e}", f"{r['floor_median_rel']:.1e}",
             f"{r['floor_within']:.2f}"]
            + ([f"{r['top1_fake']:.2f}", f"{r['top1_int8']:.2f}"] if checkpoint else []) for bits, r in table.items()]
    print_table(header, rows)
    print("\n  floor: fake quantization against itself with channels-last convolutions (float rounding alone)")
    return table
