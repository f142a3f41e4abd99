"""``videoiq predict``: a policy checkpoint on video files, with conditional execution.

Each video is decoded with PyAV, sampled as in evaluation (the checkpoint's segment count, the
segment centres; short side scaled and centre-cropped to its input size), and classified with
:meth:`videoiq.models.VideoIQ.infer`: the policy picks an action per frame and the backbone runs once
per chosen precision on just those frames, never on skipped ones. Printed per video: the class, the
action of each frame and the GFLOPs per video (the paper's convention, and what the frames that ran
cost), next to the full-precision model's.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .config import config_from_dict
from .data.clips import ClipSpec, clip_indices
from .data.codec import DecodeCheck, VideoDecodeError, read_frames_at, scan_video
from .data.transforms import EvalTransform, normalize
from .errors import UsageError
from .flops import VideoCost, action_usage, video_cost
from .models import VideoIQ
from .models.int8 import check_engine
from .strips import decision_strip, save_strip
from .train.checkpoint import checkpoint_identity, load_checkpoint, videoiq_from_checkpoint

logger = logging.getLogger(__name__)


def check_device(device: str) -> torch.device:
    """``device`` as a torch device, or a UsageError saying why it cannot run here."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r}: expected cpu, cuda or cuda:<index>") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r}: expected cpu, cuda or cuda:<index>")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device!r}: no CUDA device is available here (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


@dataclass
class LoadedPolicy:
    """A policy checkpoint ready to classify: the model (eval mode, on ``device``), the clip it reads, its classes,
    its GFLOPs (:func:`~videoiq.flops.video_cost`) and the full-precision model's per video, its identity."""

    model: VideoIQ
    spec: ClipSpec
    classes: list[str]
    cost: VideoCost
    fp_gflops: float
    identity: dict[str, Any]
    device: torch.device


def load_policy(checkpoint: str, device: str = "cpu", engine: str = "float") -> LoadedPolicy:
    """Load a policy-stage checkpoint (file or run folder) for ``engine`` on ``device``; a bad one is one error."""
    dev = check_device(device)
    check_engine(engine, dev)
    ckpt = load_checkpoint(checkpoint, stages=("policy",), what="checkpoint")
    model = videoiq_from_checkpoint(ckpt, str(checkpoint)).to(dev).eval()
    spec = ClipSpec.from_config(config_from_dict(ckpt["config"], str(checkpoint), warn_renamed=False).data,
                                train=False)
    cost = video_cost(model.backbone, model.policy, num_frames=spec.frames, input_size=spec.size)
    return LoadedPolicy(model, spec, list(ckpt["extra"]["classes"]), cost,
                        cost.gmacs({"32bit": 1.0}, with_policy=False).total,
                        checkpoint_identity(checkpoint, ckpt=ckpt), dev)


def predict_videos(checkpoint: str, videos: Sequence[str], *, device: str = "cpu", top: int = 3,
                   deterministic: bool = True, printer: Callable[[str], None] | None = print,
                   strip: str | None = None, on_error: Callable[[str, str], None] | None = None,
                   engine: str = "float", on_warning: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Classify ``videos`` with the policy checkpoint; returns one result dict per video it could read (and
    prints them). A video that cannot be opened or decoded is reported to ``on_error(path, message)`` and
    the others are still classified; without ``on_error`` it raises. A video that decodes to fewer frames than
    its container declares (truncated, damaged) is classified on what decodes and named to ``on_warning``
    (default: the ``videoiq`` logger) with both counts. With ``strip``, also writes a PNG of
    each classified video's sampled frames with the action taken on each. ``engine="int8"`` runs the
    backbone's widths on integer CPU kernels (:mod:`videoiq.models.int8`)."""
    if top < 1:
        raise UsageError(f"--top: expected >= 1, got {top}")
    loaded = load_policy(checkpoint, device, engine)
    model, spec, classes, cost, fp_cost, dev = (loaded.model, loaded.spec, loaded.classes, loaded.cost,
                                                loaded.fp_gflops, loaded.device)
    results, pictures = [], []
    for path in videos:
        try:
            clip, check, indices = file_clip(path, spec)
        except VideoDecodeError as e:
            if on_error is None:
                raise
            on_error(path, str(e))
            continue
        n = check.decoded_frames
        if check.short():
            (on_warning or logger.warning)(f"{path}: decodes short: {check.describe()}; classified on the frames "
                                           "that decode")
        logits, decisions = model.infer(normalize(clip.to(dev)), deterministic=deterministic, engine=engine)
        probs = torch.softmax(logits[0].float(), dim=0)
        best = torch.topk(probs, min(top, len(classes)))
        actions = [model.actions[a] for a in decisions[0].argmax(dim=-1).tolist()]
        usage = action_usage(decisions, model.actions)
        result = {"video": path, "frames": n, "decode": check.as_dict(), "sampled_frames": indices,
                  "top": [{"class": classes[i], "probability": float(p)}
                          for p, i in zip(best.values, best.indices, strict=True)],
                  "actions": actions, "gflops": cost.gmacs(usage).total,
                  "gflops_frames_run": cost.gmacs(usage, charge_skipped=False).total, "gflops_fp": fp_cost}
        results.append(result)
        pictures.append(clip[0].permute(0, 2, 3, 1).numpy())
        if printer is not None:
            printer(format_result(result))
    if strip is not None and results:
        titles = [f"{os.path.basename(r['video'])}: {r['top'][0]['class']}" for r in results]
        save_strip(decision_strip(pictures, [r["actions"] for r in results], titles), strip)
        if printer is not None:
            printer(f"decisions picture: {strip}")
    return results


def file_clip(path: str, spec: ClipSpec) -> tuple[torch.Tensor, DecodeCheck, list[int]]:
    """A video file as an evaluation clip: uint8 ``(1, T, 3, S, S)`` (the centre crop of frames decoded at the
    spec's short side, at the segment centres of the frames that decode), the decode check, the frame indices;
    a file that cannot be opened or decoded raises :class:`VideoDecodeError` naming it."""
    if not os.path.isfile(path):
        raise VideoDecodeError(f"{path}: no such file")
    check = scan_video(path)
    indices = clip_indices(spec, check.decoded_frames, rng=None)
    frames = read_frames_at(path, indices, short_side=spec.scale_size)
    return EvalTransform(spec.size, spec.scale_size)(torch.from_numpy(frames).permute(0, 3, 1, 2)), check, indices


def format_result(r: dict[str, Any]) -> str:
    """Several lines for one video: the class, the frame timeline, the cost."""
    first = r["top"][0]
    others = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"][1:])
    width = max(len(a) for a in r["actions"])
    lines = [f"{r['video']}: {first['class']} ({100 * first['probability']:.1f}%)"
             + (f"; then {others}" if others else ""),
             "  frame  " + " ".join(f"{i:>{width}d}" for i in r["sampled_frames"]),
             "  action " + " ".join(f"{a:>{width}s}" for a in r["actions"]),
             f"  GFLOPs per video: {r['gflops']:.4g} (paper convention), {r['gflops_frames_run']:.4g} for the frames "
             f"that ran; the fp model: {r['gflops_fp']:.4g}"]
    return "\n".join(lines)


def predict_main(args: Any) -> int:
    """The CLI body of ``videoiq predict``: every video it can read is classified; each one it cannot is one
    line on stderr, and the exit status is 1 if there was any (2 for a bad checkpoint or option)."""
    failed: list[str] = []

    def report(path: str, message: str) -> None:
        failed.append(path)
        print(f"videoiq: error: {message}", file=sys.stderr, flush=True)

    results = predict_videos(args.checkpoint, args.videos, device=args.device, top=args.top,
                             deterministic=not args.sampled, printer=None if args.json else print, strip=args.strip,
                             on_error=report, engine=args.engine,
                             on_warning=lambda m: print(f"videoiq: warning: {m}", file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(results, indent=1))
    if failed:
        print(f"videoiq: {len(failed)} of {len(args.videos)} videos could not be read", file=sys.stderr)
        return 1
    return 0

