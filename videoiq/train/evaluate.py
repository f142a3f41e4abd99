"""The ``eval`` stage: score any stage's checkpoint on the validation split, with GFLOPs per video.

* a ``fp`` or ``policy_pretrain`` checkpoint: top-1/top-5/mAP and the model's GMACs per video;
* an ``ap`` checkpoint: the same at every width of its family (each priced at ``bit_cost(width)``);
* a ``policy`` checkpoint: VideoIQ with argmax decisions (default), or ``eval.num_samples`` runs with
  sampled Gumbel decisions at the checkpoint's temperature, reported as mean and standard deviation;
  plus the share of frames at each action and GFLOPs per video in the paper's convention.

Results are returned and written as JSON into the run folder the checkpoint belongs to, outside the
checkpoint folders Ray Train manages (and deletes past ``ray.num_to_keep``)::

    <run>/eval/epoch<N>-<checkpoint id>/<split>[-argmax|-sampled][-int8].json

one file per checkpoint and mode: decisions (policy checkpoints) and engine (``int8``: the quantized widths on
integer kernels), so no mode replaces another's results. Each evaluation is a new wandb run, kept in the same
folder with the policy's decisions picture.
"""
from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import write_text_atomic
from ..config import EvalConfig
from ..data.clips import ClipSpec, VideoClipDataset, eval_loader
from ..flops import video_cost
from ..models import Int8ResNet, VideoIQ
from ..models.int8 import check_engine
from ..models.resnet import fold_frames
from ..quant import bit_width
from ..tracking import resolve_mode
from .checkpoint import CheckpointError, checkpoint_identity, load_checkpoint, load_role, resolve
from .logbook import start_tracker
from .scoring import (
    Predictions,
    SampledKinds,
    class_ap_table,
    decisions_picture,
    evaluate_policy,
    predict,
    score,
)

STAGES_SCORED = ("fp", "policy_pretrain", "ap", "policy")


def videoiq_from_checkpoint(ckpt: dict[str, Any], source: str) -> VideoIQ:
    """The VideoIQ model of a ``policy`` checkpoint (backbone, policy and teacher as trained)."""
    models = ckpt["models"]
    teacher = load_role(ckpt, "teacher", source) if "teacher" in models else None
    return VideoIQ(load_role(ckpt, "model", source), load_role(ckpt, "policy", source),
                   precisions=tuple(ckpt["extra"]["precisions"]), teacher=teacher,
                   fp_action=ckpt["extra"]["actions"][0] == "fp")


def with_frame_logits(model: torch.nn.Module, video: torch.Tensor) -> dict[str, torch.Tensor]:
    """Video logits and each frame's own logits ``(B, T, C)``, from one pass of a TSN model (its video logits
    are the mean of its frames')."""
    frame_logits = model.frame_logits(model.forward_features(video))
    return {"logits": frame_logits.mean(dim=1), "frame_logits": frame_logits}


def int8_frame_logits(integer: Int8ResNet, video: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """:func:`with_frame_logits` of an any-precision model at ``bits``, its widths on integer kernels."""
    frames, b, t = fold_frames(video, "eval")
    frame_logits = integer.model.frame_logits(integer.frame_features(frames, bits).view(b, t, -1))
    return {"logits": frame_logits.mean(dim=1), "frame_logits": frame_logits}


def kind_accuracy(pred: Predictions, kinds: SampledKinds, labels: tuple[tuple[int, ...], ...]) -> dict[str, float]:
    """``val/frames/<kind>``: % of the frames of each kind that show something whose own prediction falls in
    the label's group (what a frame of that kind can tell), from ``frame_logits``."""
    predicted = pred.extra["frame_logits"].argmax(axis=-1)  # (N, T)
    truth = np.array([labels[i][0] for i in pred.index])[:, None].repeat(predicted.shape[1], axis=1)
    ids = kinds.ids[pred.index]
    out = {}
    for k, name in enumerate(kinds.kinds.names):
        mask = ids == k
        if kinds.kinds.groups[k] is not None and mask.any():
            correct = kinds.kinds.reads_correctly(k, predicted[mask], truth[mask])
            out[f"val/frames/{name}"] = 100.0 * float(correct.mean())
    return out


def _memory_format(cfg: EvalConfig) -> torch.memory_format:
    return torch.channels_last if cfg.speed.channels_last else torch.preserve_format


def results_folder(checkpoint: Path, ckpt: dict[str, Any]) -> Path:
    """``<run>/eval/epoch<N>-<id>``: where the results of one checkpoint go. ``<run>`` is the folder of an
    in-process ``checkpoint.pt``, or the run folder above a Ray ``checkpoint_*`` folder; the id tells apart
    the checkpoints one ``checkpoint.pt`` held over time."""
    run = checkpoint.parent.parent if checkpoint.parent.name.startswith("checkpoint_") else checkpoint.parent
    ident = checkpoint_identity(checkpoint, ckpt=ckpt)["id"].removeprefix("sha256:")
    return run / "eval" / f"epoch{int(ckpt['epoch'])}-{ident[:8]}"


def mode_name(cfg: EvalConfig, stage: str) -> str:
    """``<split>[-argmax|-sampled][-<engine>]``: the file name (without ``.json``) of one evaluation mode."""
    decisions = f"-{cfg.eval.decisions}" if stage == "policy" else ""
    engine = "" if cfg.eval.engine == "float" else f"-{cfg.eval.engine}"
    return f"{cfg.data.val_split}{decisions}{engine}"


def evaluate_checkpoint(cfg: EvalConfig, device: str = "cpu", printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Score ``cfg.eval.checkpoint`` on ``cfg.data``'s validation split; writes and returns the results.

    The results also go to a new wandb run (``eval-<stage of the checkpoint>-<mode>``, kept next to the JSON):
    the metrics as its summary and the per-class AP as a table.
    """
    cfg.check_inputs()
    source = cfg.eval.checkpoint
    ckpt = load_checkpoint(source, stages=STAGES_SCORED, what="eval.checkpoint")
    spec = ClipSpec.from_config(cfg.data, train=False, num_clips=cfg.eval.num_clips, num_crops=cfg.eval.num_crops)
    val = VideoClipDataset(cfg.data.lmdb_path(cfg.data.val_split), spec)
    if val.db.classes != ckpt["extra"]["classes"]:
        raise CheckpointError(f"eval.checkpoint: {source!r} was trained on other classes than {val.db.path} lists")
    dev = torch.device(device)
    labels, num_classes = val.db.index.labels, val.db.num_classes
    frames, size = spec.frames, spec.size

    def batches():
        return eval_loader(val, cfg.data.batch_size, cfg.data.num_workers)

    kinds = SampledKinds.of(cfg, cfg.data.val_split, val.db, cfg.eval.num_clips)
    stage = ckpt["stage"]
    engine = cfg.eval.engine
    if engine != "float" and stage not in ("ap", "policy"):
        raise CheckpointError(f"eval.engine: {engine} runs the quantized widths of an ap or policy checkpoint; "
                              f"{source!r} is a {stage} checkpoint (use engine float)")
    check_engine(engine, dev)
    results: dict[str, Any] = {"checkpoint": str(resolve(source)), "stage": stage, "split": cfg.data.val_split,
                               "videos": len(val), "frames": frames, "input_size": size, "engine": engine}
    scorings: dict[str, Predictions] = {}  # what the per-class AP table shows, by column
    if stage == "policy":
        model = videoiq_from_checkpoint(ckpt, source).to(dev, memory_format=_memory_format(cfg)).eval()
        cost = video_cost(model.backbone, model.policy, num_frames=frames, input_size=size)

        def run(deterministic: bool, column: str) -> dict[str, float]:
            scored = evaluate_policy(model, cost, kinds, batches(), dev, labels, num_classes, cfg.speed.amp,
                                     deterministic, engine)
            scorings[column] = scored.predictions
            return scored.metrics

        results["decisions"] = cfg.eval.decisions
        if cfg.eval.decisions == "argmax":
            results["metrics"] = run(True, "AP %")
        else:
            runs = [run(False, f"AP % (sample {i + 1})") for i in range(cfg.eval.num_samples)]
            results["metrics"] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
            results["spread"] = {k: float(np.std([r[k] for r in runs])) for k in runs[0]}
        results["actions"] = list(model.actions)
    else:
        model = load_role(ckpt, "model", source).to(dev, memory_format=_memory_format(cfg)).eval()
        cost = video_cost(model, None, num_frames=frames, input_size=size)
        family = ckpt["models"]["model"]["kwargs"].get("bit_widths") if stage == "ap" else None
        integer = Int8ResNet(model) if engine == "int8" else None
        results["metrics"] = {}
        for bits in family or (32,):
            column = f"AP % ({bits} bits)" if family else "AP %"
            if integer is not None:
                predictor = functools.partial(int8_frame_logits, integer, bits=bits)
            else:
                predictor = functools.partial(with_frame_logits, model)
            with bit_width(model, bits) if family else contextlib.nullcontext():
                scorings[column] = predict(predictor, batches(), dev, cfg.speed.amp)
            m = score(scorings[column], labels, num_classes)
            m["val/gflops"] = cost.gmacs({f"{bits}bit": 1.0}, with_policy=False).total
            if kinds is not None:
                m.update(kind_accuracy(scorings[column], kinds, labels))
            results["metrics"].update({k.replace("val/", f"val/b{bits}/") if family else k: v for k, v in m.items()})
    folder = results_folder(resolve(source), ckpt)
    name = mode_name(cfg, stage)
    if stage == "policy":  # a few videos' frames with the action taken on each
        results["decisions_picture"] = str(decisions_picture(cfg, next(iter(scorings.values())), model.actions,
                                                             folder / f"decisions-{name}.png"))
    out = folder / f"{name}.json"
    results["file"] = str(out)
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    tracker = start_tracker(cfg, folder, resolve_mode(cfg.logging.wandb), name=f"eval-{stage}-{name}",
                            job_type="eval", resume=False)
    with tracker:
        tracker.summary({**results["metrics"], **{f"spread/{k}": v for k, v in results.get("spread", {}).items()}})
        tracker.table("val/per_class_ap", *class_ap_table(scorings, labels, val.db.classes))
        if "decisions_picture" in results:
            tracker.image("val/decisions", results["decisions_picture"])
    printer(f"eval: {stage} checkpoint scored on {len(val)} videos; results in {out}")
    return results
