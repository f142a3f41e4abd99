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
from ..models.int8 import check_engine
from ..tracking import resolve_mode
from .checkpoint import (
    CheckpointError,
    checkpoint_identity,
    load_checkpoint,
    load_role,
    resolve,
    videoiq_from_checkpoint,
)
from .logbook import start_tracker
from .pictures import decisions_picture
from .scoring import Predictions, at_width, class_ap_table, evaluate_policy, evaluate_widths
from .stage_data import StageData

STAGES_SCORED = ("fp", "policy_pretrain", "ap", "policy")


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


def _score_policy(cfg: EvalConfig, ckpt: dict[str, Any], source: str, data: StageData, batches: Callable[[], Any],
                  dev: torch.device, spec: ClipSpec) -> tuple[dict[str, Any], dict[str, Predictions]]:
    """VideoIQ with argmax decisions, or ``eval.num_samples`` sampled runs (their mean and spread)."""
    model = videoiq_from_checkpoint(ckpt, source).to(dev, memory_format=_memory_format(cfg)).eval()
    cost = video_cost(model.backbone, model.policy, num_frames=spec.frames, input_size=spec.size)
    runs = [evaluate_policy(model, cost, data.kinds, batches(), dev, data.val_labels, data.num_classes,
                            cfg.speed.amp, cfg.eval.decisions == "argmax", cfg.eval.engine)
            for _ in range(1 if cfg.eval.decisions == "argmax" else cfg.eval.num_samples)]
    results: dict[str, Any] = {"decisions": cfg.eval.decisions, "actions": list(model.actions)}
    if len(runs) == 1 and cfg.eval.decisions == "argmax":
        results["metrics"] = runs[0].metrics
        return results, {"AP %": runs[0].predictions}
    results["metrics"] = {k: float(np.mean([r.metrics[k] for r in runs])) for k in runs[0].metrics}
    results["spread"] = {k: float(np.std([r.metrics[k] for r in runs])) for k in runs[0].metrics}
    return results, {f"AP % (sample {i + 1})": r.predictions for i, r in enumerate(runs)}


def _score_recognition(cfg: EvalConfig, ckpt: dict[str, Any], source: str, data: StageData,
                       batches: Callable[[], Any], dev: torch.device,
                       spec: ClipSpec) -> tuple[dict[str, Any], dict[str, Predictions]]:
    """A recognition model (every width of an ap checkpoint's family) with its GMACs and frame-kind accuracy."""
    model = load_role(ckpt, "model", source).to(dev, memory_format=_memory_format(cfg)).eval()
    family = ckpt["models"]["model"]["kwargs"].get("bit_widths") if ckpt["stage"] == "ap" else None
    cost = video_cost(model, None, num_frames=spec.frames, input_size=spec.size)
    scored = evaluate_widths(model, family, batches(), dev, data.val_labels, data.num_classes, cfg.speed.amp,
                             engine=cfg.eval.engine, kinds=data.kinds, cost=cost)
    if not family:
        return {"metrics": scored.metrics}, {"AP %": scored.predictions}
    metrics = {k: v for k, v in scored.metrics.items() if k.startswith("val/b")}  # each width's, named by it
    # one gathered pass holds every width's logits; the table shows each
    return {"metrics": metrics}, {f"AP % ({bits} bits)": at_width(scored.predictions, bits) for bits in family}


def evaluate_checkpoint(cfg: EvalConfig, device: str = "cpu", printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Score ``cfg.eval.checkpoint`` on ``cfg.data``'s validation split; writes and returns the results.

    The results also go to a new wandb run (``eval-<stage of the checkpoint>-<mode>``, kept next to the JSON):
    the metrics as its summary and the per-class AP as a table.
    """
    cfg.check_inputs()
    source = cfg.eval.checkpoint
    ckpt = load_checkpoint(source, stages=STAGES_SCORED, what="eval.checkpoint")
    data = StageData.open(cfg, cfg.eval.num_clips)
    if data.classes != ckpt["extra"]["classes"]:
        raise CheckpointError(f"eval.checkpoint: {source!r} was trained on other classes than {data.val.path} lists")
    stage, engine = ckpt["stage"], cfg.eval.engine
    if engine != "float" and stage not in ("ap", "policy"):
        raise CheckpointError(f"eval.engine: {engine} runs the quantized widths of an ap or policy checkpoint; "
                              f"{source!r} is a {stage} checkpoint (use engine float)")
    dev = torch.device(device)
    check_engine(engine, dev)
    spec = ClipSpec.from_config(cfg.data, train=False, num_clips=cfg.eval.num_clips, num_crops=cfg.eval.num_crops)
    val = VideoClipDataset(data.val, spec)

    def batches():
        return eval_loader(val, cfg.data.batch_size, cfg.data.num_workers)

    score = _score_policy if stage == "policy" else _score_recognition
    scored, scorings = score(cfg, ckpt, source, data, batches, dev, spec)
    results: dict[str, Any] = {"checkpoint": str(resolve(source)), "stage": stage, "split": cfg.data.val_split,
                               "videos": len(val), "frames": spec.frames, "input_size": spec.size, "engine": engine,
                               **scored}
    folder = results_folder(resolve(source), ckpt)
    name = mode_name(cfg, stage)
    if stage == "policy":  # a few videos' frames with the action taken on each
        results["decisions_picture"] = str(decisions_picture(data.val, ClipSpec.from_config(cfg.data, train=False),
                                                             next(iter(scorings.values())), results["actions"],
                                                             folder / f"decisions-{name}.png"))
    out = folder / f"{name}.json"
    results["file"] = str(out)
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    tracker = start_tracker(cfg, folder, resolve_mode(cfg.logging.wandb), name=f"eval-{stage}-{name}",
                            job_type="eval", resume=False)
    with tracker:
        tracker.summary({**results["metrics"], **{f"spread/{k}": v for k, v in results.get("spread", {}).items()}})
        tracker.table("val/per_class_ap", *class_ap_table(scorings, data.val_labels, data.classes))
        if "decisions_picture" in results:
            tracker.image("val/decisions", results["decisions_picture"])
    printer(f"eval: {stage} checkpoint scored on {len(val)} videos; results in {out}")
    return results
