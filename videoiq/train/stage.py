"""Build a stage from its config and the previous stages' checkpoints, then train and evaluate it.

:func:`build_stage` turns a validated stage config into a :class:`Stage`: the models (initialised from
local weight files or the previous stage's checkpoint, checked on load), the Task, the optimizer and
schedule, and the evaluation. :func:`run_epochs` is the epoch loop with checkpointing and resume;
:func:`train_in_process` runs it in-process (``ray.num_workers: 0``), and the Ray Train worker runs the same
loop on each worker. Hand-off between stages is by checkpoint path:

* ``ap`` reads the ``fp`` checkpoint (``init.backbone_checkpoint``): its model initialises every width
  and is the frozen KD teacher;
* ``policy`` reads the ``ap`` checkpoint (its backbone, precision family and teacher: a ``fp``
  checkpoint here is an error, the original's README trap) and the ``policy_pretrain`` checkpoint
  (``init.policy_backbone_checkpoint``) for the policy's MobileNetV2.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..config import APConfig, ConfigError, FPConfig, PolicyPretrainConfig, PolicyStageConfig, StageConfig, config_to_dict
from ..data.frame_kinds import FrameKinds, find_frame_kinds
from ..data.records import VideoDB
from ..flops import action_usage, video_cost
from ..models import VideoIQ, create_model, load_fp_weights, load_fp_weights_file
from ..quant import bit_width
from ..tracking import Tracker, resolve_mode
from .checkpoint import (CheckpointError, check_storage, load_checkpoint, load_role, model_entry, save_checkpoint,
                         state_bytes)
from .loop import NonFiniteLoss, Predictions, class_ap_table, predict, recalibrate_batch_norm, score, train_one_epoch
from .optim import any_precision_groups, build_optimizer, build_scheduler, policy_groups, single_group
from .tasks import AnyPrecisionTask, FPTask, PolicyTask, Task

log = logging.getLogger("videoiq.train")


class Evaluation(NamedTuple):
    """One validation pass: the metrics and the predictions they were scored from (the main model's)."""

    metrics: dict[str, float]
    predictions: Predictions


@dataclass
class Stage:
    """Everything a stage's epochs need, built once per worker."""

    cfg: StageConfig
    task: Task
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    entries: dict[str, tuple[str, dict[str, Any], nn.Module]]  # role -> (registry name, kwargs, model)
    classes: list[str]
    val_labels: tuple[tuple[int, ...], ...]
    evaluate: Callable[[Iterable[dict[str, Tensor]], torch.device], Evaluation]
    extra: dict[str, Any] = field(default_factory=dict)
    global_step: int = 0  # optimizer steps so far (rank 0's), the x axis of progress records
    last_saved: str = ""  # where the newest checkpoint is, for messages (set by whoever writes or restores it)

    def payload(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        """The checkpoint of this stage after ``epoch`` completed epochs."""
        extra = {"classes": self.classes, "global_step": self.global_step, **self.extra}
        if isinstance(self.task, PolicyTask):
            extra["temperature"] = float(self.task.model.policy.temperature)
        return {"stage": self.cfg.STAGE, "epoch": epoch, "config": config_to_dict(self.cfg),
                "models": {role: model_entry(name, kw, m) for role, (name, kw, m) in self.entries.items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "metrics": metrics, "extra": extra}

    def checkpoint_bytes(self) -> int:
        """About the size of one checkpoint of this stage."""
        return state_bytes([m for _, _, m in self.entries.values()], self.optimizer)

    def restore(self, ckpt: dict[str, Any], source: str) -> int:
        """Load a checkpoint of this same stage (resume) from ``source``; returns the epochs already done.

        A checkpoint of other classes or another model is refused naming the difference: resuming it would
        fail deep in PyTorch, or train on labels that mean other classes."""
        saved = list(ckpt["extra"].get("classes", self.classes))
        if saved != list(self.classes):
            raise CheckpointError(
                f"resume: {source} was trained on {len(saved)} classes ({_few(saved)}), data.root's databases have "
                f"{len(self.classes)} ({_few(self.classes)}); train in another run folder (ray.name or "
                "ray.storage_path), or point data.root at the data it was trained on")
        for role, (_, _, model) in self.entries.items():
            try:
                model.load_state_dict(ckpt["models"][role]["state_dict"])
            except RuntimeError as e:  # torch names every mismatched tensor; the first line is enough here
                raise CheckpointError(f"resume: {source}: its {role} does not fit this config's model "
                                      f"({str(e).strip().splitlines()[-1].strip()}); train in another run folder "
                                      "(ray.name or ray.storage_path)") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.global_step = int(ckpt["extra"].get("global_step", 0))
        return int(ckpt["epoch"])


def _few(names: list[str], shown: int = 4) -> str:
    """``a, b, c, d, ...``: the first few names of a list."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def dataset_classes(cfg: StageConfig) -> tuple[list[str], tuple[tuple[int, ...], ...]]:
    """Class names (from the training database) and the validation labels; the two must agree."""
    from ..data.specs import dataset_spec

    train = VideoDB(cfg.data.lmdb_path(cfg.data.train_split))
    val = VideoDB(cfg.data.lmdb_path(cfg.data.val_split))
    shortest = dataset_spec(cfg.data.dataset).min_train_frames
    if not any(n >= shortest for n in train.index.num_frames):
        raise ConfigError(f"data.root: {train.path} has no training video" + (f" with >= {shortest} frames" if shortest else ""))
    if len(val) == 0:
        raise ConfigError(f"data.root: {val.path} has no videos to validate on")
    if train.classes != val.classes:
        raise ConfigError(f"{train.path} and {val.path} list different classes")
    expected = dataset_spec(cfg.data.dataset).num_classes
    if expected is not None and train.num_classes != expected:
        raise ConfigError(f"data.dataset: {cfg.data.dataset} has {expected} classes, {train.path} has {train.num_classes}")
    return train.classes, val.index.labels


def _recognition(cfg: FPConfig | PolicyPretrainConfig, num_classes: int) -> tuple[str, dict[str, Any], nn.Module]:
    kwargs = {"num_classes": num_classes, "dropout": cfg.model.dropout}
    model = create_model(cfg.model.name, **kwargs)
    if cfg.init.imagenet_weights:
        log.info(load_fp_weights_file(model, cfg.init.imagenet_weights, load_head=False).summary())
    return cfg.model.name, kwargs, model


def _any_precision(cfg: APConfig, num_classes: int) -> tuple[dict[str, tuple[str, dict[str, Any], nn.Module]], str]:
    q = cfg.quant
    kwargs = {"num_classes": num_classes, "dropout": cfg.model.dropout, "bit_widths": list(q.bit_widths),
              "switchable_bn": q.switchable_bn, "switchable_clip": q.switchable_clip, "clip_init": q.clip_init,
              "mean_aligned": q.mean_aligned}
    model = create_model(cfg.model.name, **kwargs)
    entries = {"model": (cfg.model.name, kwargs, model)}
    source = cfg.init.backbone_checkpoint
    if source:
        ckpt = load_checkpoint(source, stages=("fp",), what="init.backbone_checkpoint")
        fp_entry = ckpt["models"]["model"]
        if cfg.model.name != f"ap_{fp_entry['name']}":
            raise CheckpointError(f"init.backbone_checkpoint: {source!r} holds a {fp_entry['name']}; "
                                  f"model.name {cfg.model.name!r} needs its full-precision twin {cfg.model.name[3:]!r}")
        teacher = load_role(ckpt, "model", source)
        if fp_entry["kwargs"]["num_classes"] != num_classes:
            raise CheckpointError(f"init.backbone_checkpoint: {source!r} has {fp_entry['kwargs']['num_classes']} "
                                  f"classes, the data has {num_classes}")
        log.info(load_fp_weights(model, teacher.state_dict(), source=source, load_head=True).summary())
        if cfg.loss.teacher:
            entries["teacher"] = (fp_entry["name"], fp_entry["kwargs"], teacher.eval())
    elif cfg.init.imagenet_weights:
        log.info(load_fp_weights_file(model, cfg.init.imagenet_weights, load_head=False).summary())
    if cfg.loss.teacher and "teacher" not in entries:
        raise ConfigError("loss.teacher: the KD teacher is the fp stage's model; set init.backbone_checkpoint")
    return entries, source or ""


def _policy(cfg: PolicyStageConfig, num_classes: int) -> tuple[dict[str, tuple[str, dict[str, Any], nn.Module]], VideoIQ]:
    source = cfg.init.backbone_checkpoint
    ckpt = load_checkpoint(source, stages=("ap",), what="init.backbone_checkpoint")
    bb_entry = ckpt["models"]["model"]
    family = tuple(bb_entry["kwargs"]["bit_widths"])
    if cfg.quant is not None and tuple(cfg.quant.bit_widths) != family:
        raise CheckpointError(f"quant.bit_widths {list(cfg.quant.bit_widths)} differs from the family {list(family)} "
                              f"the ap checkpoint {source!r} was trained with (master width and order included)")
    if bb_entry["kwargs"]["num_classes"] != num_classes:
        raise CheckpointError(f"init.backbone_checkpoint: {source!r} has {bb_entry['kwargs']['num_classes']} classes, "
                              f"the data has {num_classes}")
    backbone = load_role(ckpt, "model", source)
    entries: dict[str, tuple[str, dict[str, Any], nn.Module]] = {"model": (bb_entry["name"], bb_entry["kwargs"], backbone)}
    teacher = None
    if cfg.loss.teacher or cfg.policy.fp_action:
        teacher = load_role(ckpt, "teacher", source)
        entries["teacher"] = (ckpt["models"]["teacher"]["name"], ckpt["models"]["teacher"]["kwargs"], teacher)
    p = cfg.policy
    precisions = tuple(p.precisions) if p.precisions is not None else family
    pkw = {"num_precisions": len(precisions) + int(p.fp_action), "skip_choices": list(p.skip_choices),
           "hidden_size": p.hidden_size, "input_size": p.input_size, "dropout": p.dropout,
           "num_classes": num_classes if p.aux_classifier else None, "temperature": p.temperature_init}
    policy = create_model(p.model, **pkw)
    if cfg.init.policy_backbone_checkpoint:
        pre = load_checkpoint(cfg.init.policy_backbone_checkpoint, stages=("policy_pretrain",),
                              what="init.policy_backbone_checkpoint")
        mobilenet = load_role(pre, "model", cfg.init.policy_backbone_checkpoint)
        try:
            policy.features.load_state_dict(mobilenet.features.state_dict())
        except RuntimeError as e:
            raise CheckpointError(f"init.policy_backbone_checkpoint: its {pre['models']['model']['name']} does not fit "
                                  f"policy.model {p.model!r}: {str(e).splitlines()[0]}") from None
    entries["policy"] = (p.model, pkw, policy)
    model = VideoIQ(backbone, policy, precisions=precisions, teacher=teacher, fp_action=p.fp_action)
    return entries, model


def build_stage(cfg: StageConfig, device: torch.device | str = "cpu") -> Stage:
    """Models, task, optimizer, schedule and evaluation of a training stage (fp, ap, policy_pretrain, policy)."""
    classes, val_labels = dataset_classes(cfg)
    num_classes = len(classes)
    amp = cfg.speed.amp
    if getattr(getattr(cfg, "model", None), "num_classes", None) not in (None, num_classes):
        raise ConfigError(f"model.num_classes: {cfg.model.num_classes}, but the data has {num_classes} classes")
    extra: dict[str, Any] = {}
    if isinstance(cfg, (FPConfig, PolicyPretrainConfig)):
        name, kw, model = _recognition(cfg, num_classes)
        entries = {"model": (name, kw, model)}
        task: Task = FPTask(model)
        groups = single_group(model, cfg.optim)

        def evaluate(batches, dev):
            pred = predict(lambda v: {"logits": model(v)}, batches, dev, amp)
            return Evaluation(score(pred, val_labels, num_classes), pred)
    elif isinstance(cfg, APConfig):
        entries, _ = _any_precision(cfg, num_classes)
        model = entries["model"][2]
        teacher = entries.get("teacher", (None, None, None))[2]
        task = AnyPrecisionTask(model, cfg.quant.bit_widths, teacher, cfg.loss.kind, cfg.loss.kd_weight)
        groups = any_precision_groups(model, cfg.optim)

        def evaluate(batches, dev):
            # one pass over the data; every width scores the same clips
            def all_widths(v):
                out = {}
                for bits in cfg.quant.bit_widths:
                    with bit_width(model, bits):
                        out[f"b{bits}"] = model(v)
                return {"logits": out[f"b{cfg.quant.bit_widths[0]}"], **out}
            pred = predict(all_widths, batches, dev, amp)
            metrics = score(pred, val_labels, num_classes)
            for bits in cfg.quant.bit_widths:
                per = Predictions(pred.index, pred.extra[f"b{bits}"], {}, pred.skipped)
                metrics.update({k.replace("val/", f"val/b{bits}/"): v for k, v in score(per, val_labels, num_classes).items()
                                if k.endswith(("top1", "mAP"))})
            return Evaluation(metrics, pred)
    elif isinstance(cfg, PolicyStageConfig):
        entries, model = _policy(cfg, num_classes)
        task = PolicyTask(model, cfg.loss, cfg.policy.temperature_init, cfg.policy.temperature_decay)
        groups = policy_groups(model.policy, cfg.optim)
        cost = video_cost(model.backbone, model.policy, num_frames=cfg.data.num_frames * cfg.data.frames_per_segment,
                          input_size=cfg.data.input_size)
        extra.update({"actions": list(model.actions), "precisions": list(model.precisions)})
        kinds = SampledKinds.of(cfg, cfg.data.val_split, VideoDB(cfg.data.lmdb_path(cfg.data.val_split)))

        def evaluate(batches, dev):
            pred = predict(lambda v: decide(model, v), batches, dev, amp)
            return Evaluation(policy_metrics(pred, model.actions, cost, val_labels, num_classes, kinds=kinds), pred)
    else:
        raise ConfigError(f"stage {cfg.STAGE!r} does not train; run it with the eval launcher")
    optimizer = build_optimizer(groups, cfg.optim)
    memory_format = torch.channels_last if cfg.speed.channels_last else torch.preserve_format
    for _, _, m in entries.values():
        m.to(device, memory_format=memory_format)
    return Stage(cfg, task, optimizer, build_scheduler(optimizer, cfg.optim), entries, classes, val_labels, evaluate, extra)


def decide(model: VideoIQ, video: Tensor, deterministic: bool = True) -> dict[str, Tensor]:
    """VideoIQ logits and one-hot decisions of a batch (argmax, or Gumbel samples at the model's temperature)."""
    out = model(video, deterministic=deterministic)
    return {"logits": out.logits, "decisions": out.decisions}


@dataclass(frozen=True)
class SampledKinds:
    """The frame kinds of the frames evaluation samples: kind ids ``(videos, frames)`` in database order."""

    kinds: FrameKinds
    ids: np.ndarray

    @classmethod
    def of(cls, cfg: StageConfig, split: str, db: VideoDB, num_clips: int = 1) -> "SampledKinds | None":
        """For a split's database when it has a frame kinds file and evaluation takes one clip per video."""
        kinds = find_frame_kinds(cfg.data.root, split, db)
        if kinds is None:
            return None
        if num_clips != 1:
            log.warning("frame kinds: reported only for one clip per video (eval.num_clips is %d)", num_clips)
            return None
        return cls(kinds, kinds.sampled(db, cfg.data.num_frames, cfg.data.frames_per_segment))


def kind_usage(decisions: np.ndarray, kind_ids: np.ndarray, kinds: FrameKinds, actions: tuple[str, ...],
               prefix: str = "val") -> dict[str, float]:
    """``<prefix>/usage/<kind>/<action>``: % of the frames of each kind at each action (decisions ``(N, T, A)``)."""
    out = {}
    for k, name in enumerate(kinds.names):
        chosen = decisions[kind_ids == k]
        if len(chosen):
            out.update({f"{prefix}/usage/{name}/{a}": 100.0 * float(u) for a, u in zip(actions, chosen.mean(axis=0))})
    return out


def policy_metrics(pred: Predictions, actions: tuple[str, ...], cost: Any, labels: tuple[tuple[int, ...], ...],
                   num_classes: int, prefix: str = "val", kinds: SampledKinds | None = None) -> dict[str, float]:
    """Accuracy, mAP, precision usage (per frame kind too, with ``kinds``) and GMACs per video of VideoIQ
    predictions."""
    metrics = score(pred, labels, num_classes, prefix)
    usage = action_usage(torch.from_numpy(pred.extra["decisions"]), actions)
    metrics.update({f"{prefix}/usage/{a}": 100.0 * u for a, u in usage.items()})
    if kinds is not None:
        metrics.update(kind_usage(pred.extra["decisions"], kinds.ids[pred.index], kinds.kinds, actions, prefix))
    g = cost.gmacs(usage)
    metrics.update({f"{prefix}/gflops": g.total, f"{prefix}/gflops_backbone": g.backbone,
                    f"{prefix}/gflops_run": cost.gmacs(usage, charge_skipped=False).total})
    return metrics


def decisions_picture(cfg: StageConfig, pred: Predictions, actions: tuple[str, ...], path: Path) -> Path:
    """Write the strip of a few validation videos' frames with the action taken on each (``videoiq.strips``)."""
    from ..data.clips import ClipSpec
    from ..strips import save_strip, validation_strip

    db = VideoDB(cfg.data.lmdb_path(cfg.data.val_split))
    return Path(save_strip(validation_strip(db, ClipSpec.from_config(cfg.data, train=False), pred, actions), path))


def run_epochs(stage: Stage, module: nn.Module, train_batches: Callable[[int], Iterable[dict[str, Tensor]]],
               val_batches: Callable[[], Iterable[dict[str, Tensor]]], device: torch.device, start_epoch: int,
               on_epoch_end: Callable[[int, dict[str, float], Evaluation | None], None],
               on_log: Callable[[dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train from ``start_epoch`` to ``optim.epochs``; after each epoch call ``on_epoch_end`` (which saves the
    checkpoint and logs) with the validation's result, which is ``None`` on epochs that ``optim.val_every``
    passes over; ``on_log`` gets a progress record every ``logging.log_every``
    steps. After the last epoch, ``optim.bn_recalibration`` batches recompute the BN statistics first.
    Returns the last epoch's metrics."""
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, stage.cfg.optim.epochs):
        stage.task.on_epoch_start(epoch)
        metrics = {"epoch": float(epoch + 1), "lr": stage.optimizer.param_groups[0]["lr"]}
        if isinstance(stage.task, PolicyTask):
            metrics["temperature"] = float(stage.task.model.policy.temperature)
        try:
            metrics.update(train_one_epoch(stage.task, module, train_batches(epoch), stage.optimizer, device,
                                           epoch=epoch, log_every=stage.cfg.logging.log_every, on_log=on_log,
                                           amp=stage.cfg.speed.amp))
        except NonFiniteLoss as e:
            last = stage.last_saved or "none: no epoch has finished yet"
            raise NonFiniteLoss(f"{stage.cfg.STAGE}: {e}. Stopped before that step changed any weight; the last good "
                                f"checkpoint is {last}, left as it was") from None
        stage.global_step += int(metrics["train/steps"])
        stage.scheduler.step()
        if epoch + 1 == stage.cfg.optim.epochs and stage.cfg.optim.bn_recalibration:
            metrics["train/bn_recalibration_batches"] = float(recalibrate_batch_norm(
                stage.task, train_batches(epoch + 1), stage.cfg.optim.bn_recalibration, device, stage.cfg.speed.amp))
        evaluation = None
        if (epoch + 1) % stage.cfg.optim.val_every == 0 or epoch + 1 == stage.cfg.optim.epochs:
            stage.task.train(False)
            evaluation = stage.evaluate(val_batches(), device)
            metrics.update(evaluation.metrics)
        on_epoch_end(epoch + 1, metrics, evaluation)
    return metrics


def start_tracker(cfg: StageConfig, run_dir: Path, mode: str, name: str | None = None,
                  job_type: str | None = None) -> Tracker:
    """The stage's wandb run (``mode`` from :func:`videoiq.tracking.resolve_mode`), kept in ``run_dir``."""
    return Tracker.start(mode=mode, directory=run_dir, project=cfg.logging.project, name=name or run_dir.name,
                         job_type=job_type or cfg.STAGE, group=cfg.logging.group, config=config_to_dict(cfg))


class StageLog:
    """Where a stage's results go (rank 0): progress lines, ``metrics.jsonl`` and the wandb run.

    ``metrics.jsonl`` gets one line per epoch *before* the epoch's checkpoint is written, and lines of
    epochs after the checkpoint a run resumes from are dropped (:meth:`resume`), so after any crash
    the file holds each completed epoch exactly once. wandb gets the epoch after its checkpoint.
    """

    SHOWN = ("epoch", "train/loss", "train/top1", "val/top1", "val/mAP", "val/gflops")

    def __init__(self, stage: Stage, run_dir: Path, printer: Callable[[str], None], tracker: Tracker):
        self.stage, self.path, self.printer, self.tracker = stage, run_dir / "metrics.jsonl", printer, tracker

    def resume(self, epoch: int) -> None:
        """Keep only the lines of epochs up to ``epoch`` (the checkpoint a run continues from)."""
        if self.path.exists():
            lines = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("epoch", 0) <= epoch]
            self.path.write_text("".join(ln + "\n" for ln in lines))

    def record(self, metrics: dict[str, float]) -> None:
        """Append the epoch's line to ``metrics.jsonl`` (the local record that never depends on wandb)."""
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")

    def publish(self, epoch: int, metrics: dict[str, float], evaluation: Evaluation | None) -> None:
        """Print the epoch and log it to wandb; after the last epoch also the summary and per-class AP."""
        cfg = self.stage.cfg
        shown = {k: v for k, v in metrics.items() if k in self.SHOWN}
        self.printer(f"{cfg.STAGE}: " + " ".join(f"{k}={v:.4g}" for k, v in shown.items()))
        self.tracker.log(metrics)
        if epoch == cfg.optim.epochs and evaluation is not None:  # the last epoch is always validated
            self.tracker.summary(metrics)
            self.tracker.table("val/per_class_ap", *class_ap_table({"AP %": evaluation.predictions},
                                                                   self.stage.val_labels, self.stage.classes))
            if isinstance(self.stage.task, PolicyTask) and self.tracker.active:
                self.tracker.image("val/decisions", decisions_picture(cfg, evaluation.predictions,
                                                                      self.stage.task.model.actions,
                                                                      self.path.parent / "decisions_val.png"))

    def step(self, record: dict[str, float]) -> None:
        """A progress record from the loop every ``logging.log_every`` steps."""
        of = f"/{record['steps']:.0f}" if "steps" in record else ""
        left = f", epoch ends in {record['seconds_left']:.0f} s" if "seconds_left" in record else ""
        self.printer(f"{self.stage.cfg.STAGE}: epoch {record['epoch'] + 1} step {record['step']}{of} "
                     f"loss={record['loss']:.4g} lr={record['lr']:.3g} {record['videos_per_s']:.1f} videos/s{left}")
        self.tracker.log({"global_step": self.stage.global_step + record["step"], "step/loss": record["loss"],
                          "step/lr": record["lr"]})


def train_in_process(cfg: StageConfig, out_dir: str | os.PathLike, device: str = "cpu",
              printer: Callable[[str], None] = print,
              on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Run a training stage in this process (no Ray) into ``out_dir``; resumes from its checkpoint there.

    ``on_epoch(epoch, metrics)`` is called after each epoch's checkpoint is written (a Tune trial reports there).
    """
    from torch.utils.data import DataLoader

    from ..data.clips import ClipSpec, VideoClipDataset, eval_loader
    from .checkpoint import FILENAME

    cfg.check_inputs()
    out = Path(out_dir)
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    stage = build_stage(cfg, dev)
    check_storage(out, 2 * stage.checkpoint_bytes())  # the checkpoint and its next version side by side
    start = 0
    if (out / FILENAME).exists():
        ckpt = load_checkpoint(out / FILENAME, stages=(cfg.STAGE,), what="resume")
        start = stage.restore(ckpt, str(out / FILENAME))
        if start >= cfg.optim.epochs:
            printer(f"{cfg.STAGE}: {out / FILENAME} already has all {start} epochs; nothing to do")
            return dict(ckpt["metrics"])
        printer(f"{cfg.STAGE}: resuming from {out / FILENAME} after epoch {start}")
        stage.last_saved = f"{out / FILENAME} (after epoch {start})"
    ev = getattr(cfg, "eval", None)
    train_ds = VideoClipDataset(cfg.data.lmdb_path(cfg.data.train_split), ClipSpec.from_config(cfg.data, train=True), cfg.seed)
    val_ds = VideoClipDataset(cfg.data.lmdb_path(cfg.data.val_split), ClipSpec.from_config(
        cfg.data, train=False, num_clips=ev.num_clips if ev else 1, num_crops=ev.num_crops if ev else 1))
    workers = cfg.data.num_workers

    def train_batches(epoch: int):
        train_ds.set_epoch(epoch)
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        return DataLoader(train_ds, batch_size=cfg.data.batch_size, shuffle=True, generator=g, num_workers=workers,
                          drop_last=len(train_ds) > cfg.data.batch_size)

    def val_batches():
        return eval_loader(val_ds, cfg.data.batch_size, workers)

    logbook = StageLog(stage, out, printer, start_tracker(cfg, out, resolve_mode(cfg.logging.wandb)))
    logbook.resume(start)

    def on_epoch_end(epoch: int, metrics: dict[str, float], evaluation: Evaluation | None) -> None:
        logbook.record(metrics)
        save_checkpoint(out / FILENAME, stage.payload(epoch, metrics))
        stage.last_saved = f"{out / FILENAME} (after epoch {epoch})"
        logbook.publish(epoch, metrics, evaluation)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    module = torch.compile(stage.task.module) if cfg.speed.compile else stage.task.module
    with logbook.tracker:
        return run_epochs(stage, module, train_batches, val_batches, dev, start, on_epoch_end, logbook.step)
