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
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .data.codec import count_frames, read_frames_at
from .data.sampling import eval_indices
from .data.transforms import EvalTransform, normalize
from .flops import action_usage, video_cost
from .train.checkpoint import load_checkpoint
from .train.evaluate import videoiq_from_checkpoint


def predict_videos(checkpoint: str, videos: Sequence[str], *, device: str = "cpu", top: int = 3,
                   deterministic: bool = True, printer: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """Classify ``videos`` with the policy checkpoint; returns one result dict per video (and prints them)."""
    ckpt = load_checkpoint(checkpoint, stages=("policy",), what="checkpoint")
    model = videoiq_from_checkpoint(ckpt, str(checkpoint)).to(device).eval()
    data = ckpt["config"]["data"]
    segments, per_segment, size = data["num_frames"], data["frames_per_segment"], data["input_size"]
    scale = int(round(size / 0.875)) if data["scale_up"] else size
    classes = ckpt["extra"]["classes"]
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    cost = video_cost(model.backbone, model.policy, num_frames=segments * per_segment, input_size=size)
    fp_cost = cost.gmacs({"32bit": 1.0}, with_policy=False).total
    results = []
    for path in videos:
        n = count_frames(path)
        indices = eval_indices(n, segments, per_segment).tolist()
        frames = read_frames_at(path, indices, short_side=scale)
        clip = EvalTransform(size, scale)(torch.from_numpy(frames).permute(0, 3, 1, 2))  # (1, T, 3, S, S)
        logits, decisions = model.infer(normalize(clip.to(device)), deterministic=deterministic)
        probs = torch.softmax(logits[0].float(), dim=0)
        best = torch.topk(probs, min(top, len(classes)))
        actions = [model.actions[a] for a in decisions[0].argmax(dim=-1).tolist()]
        usage = action_usage(decisions, model.actions)
        result = {"video": path, "frames": n, "sampled_frames": indices,
                  "top": [{"class": classes[i], "probability": float(p)} for p, i in zip(best.values, best.indices)],
                  "actions": actions, "gflops": cost.gmacs(usage).total,
                  "gflops_frames_run": cost.gmacs(usage, charge_skipped=False).total, "gflops_fp": fp_cost}
        results.append(result)
        if printer is not None:
            printer(format_result(result))
    return results


def format_result(r: dict[str, Any]) -> str:
    """Several lines for one video: the class, the frame timeline, the cost."""
    first = r["top"][0]
    others = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"][1:])
    width = max(len(a) for a in r["actions"])
    lines = [f"{r['video']}: {first['class']} ({100 * first['probability']:.1f}%)" + (f"; then {others}" if others else ""),
             "  frame  " + " ".join(f"{i:>{width}d}" for i in r["sampled_frames"]),
             "  action " + " ".join(f"{a:>{width}s}" for a in r["actions"]),
             f"  GFLOPs per video: {r['gflops']:.4g} (paper convention), {r['gflops_frames_run']:.4g} for the frames "
             f"that ran; the fp model: {r['gflops_fp']:.4g}"]
    return "\n".join(lines)


def predict_main(args: Any) -> int:
    """The CLI body of ``videoiq predict``."""
    results = predict_videos(args.checkpoint, args.videos, device=args.device, top=args.top,
                             deterministic=not args.sampled, printer=None if args.json else print)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0

