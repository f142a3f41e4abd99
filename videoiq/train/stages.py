"""Building a training stage from its config: the models (initialised from local weight files or the previous
stage's checkpoint, checked on load), the Task, the optimizer and schedule, and the validation pass.

Hand-off between stages is by checkpoint path:

* ``ap`` reads the ``fp`` checkpoint (``init.backbone_checkpoint``): its model initialises every width
  and is the frozen KD teacher;
* ``policy`` reads the ``ap`` checkpoint (its backbone, precision family and teacher: a ``fp``
  checkpoint here is an error, the original's README trap) and the ``policy_pretrain`` checkpoint
  (``init.policy_backbone_checkpoint``) for the policy's MobileNetV2.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..config import APConfig, ConfigError, FPConfig, PolicyConfig, PolicyPretrainConfig, StageConfig, config_to_dict
from ..errors import first_few
from ..flops import video_cost
from ..models import VideoIQ, create_model, load_fp_weights, load_fp_weights_file
from .checkpoint import CheckpointError, load_checkpoint, load_role, model_entry, state_bytes
from .optim import any_precision_groups, build_optimizer, build_scheduler, policy_groups, single_group
from .scoring import Evaluation, evaluate_policy, evaluate_widths
from .stage_data import StageData
from .tasks import AnyPrecisionTask, FPTask, PolicyTask, Task

log = logging.getLogger("videoiq.train")


class ModelEntry(NamedTuple):
    """A model a stage trains or uses, as its checkpoint records it: registry name, constructor kwargs, module."""

    name: str
    kwargs: dict[str, Any]
    module: nn.Module


@dataclass
class Stage:
    """Everything a stage's epochs need, built once per worker."""

    cfg: StageConfig
    task: Task
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    entries: dict[str, ModelEntry]  # by role: model, teacher, policy
    data: StageData
    evaluate: Callable[[Iterable[dict[str, Tensor]], torch.device], Evaluation]
    extra: dict[str, Any] = field(default_factory=dict)
    global_step: int = 0  # optimizer steps so far (rank 0's), the x axis of progress records
    last_saved: str = ""  # where the newest checkpoint is, for messages (set by whoever writes or restores it)
    lineage: dict[str, Any] = field(default_factory=dict)  # what it is built from (lineage.check_run gives it)

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @property
    def val_labels(self) -> tuple[tuple[int, ...], ...]:
        return self.data.val_labels

    def payload(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        """The checkpoint of this stage after ``epoch`` completed epochs."""
        extra = {"classes": self.classes, "global_step": self.global_step, **self.extra}
        if isinstance(self.task, PolicyTask):
            extra["temperature"] = float(self.task.model.policy.temperature)
        return {"stage": self.cfg.STAGE, "epoch": epoch, "config": config_to_dict(self.cfg),
                "models": {role: model_entry(e.name, e.kwargs, e.module) for role, e in self.entries.items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "metrics": metrics, "extra": extra, "lineage": self.lineage}

    def checkpoint_bytes(self) -> int:
        """About the size of one checkpoint of this stage."""
        return state_bytes([e.module for e in self.entries.values()], self.optimizer)

    def restore(self, ckpt: dict[str, Any], source: str) -> int:
        """Load a checkpoint of this same stage (resume) from ``source``; returns the epochs already done.

        A checkpoint of other classes or another model is refused naming the difference: resuming it would
        fail deep in PyTorch, or train on labels that mean other classes."""
        saved = list(ckpt["extra"].get("classes", self.classes))
        if saved != list(self.classes):
            raise CheckpointError(
                f"resume: {source} was trained on {len(saved)} classes ({first_few(saved)}), data.root's databases "
                f"have {len(self.classes)} ({first_few(self.classes)}); train in another run folder (run.name or "
                "run.storage_path), or point data.root at the data it was trained on")
        for role, entry in self.entries.items():
            try:
                entry.module.load_state_dict(ckpt["models"][role]["state_dict"])
            except RuntimeError as e:  # torch names every mismatched tensor; the first line is enough here
                raise CheckpointError(f"resume: {source}: its {role} does not fit this config's model "
                                      f"({str(e).strip().splitlines()[-1].strip()}); train in another run folder "
                                      "(run.name or run.storage_path)") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.global_step = int(ckpt["extra"].get("global_step", 0))
        return int(ckpt["epoch"])


def _recognition_model(cfg: FPConfig | PolicyPretrainConfig, num_classes: int) -> ModelEntry:
    kwargs = {"num_classes": num_classes, "dropout": cfg.model.dropout}
    model = create_model(cfg.model.name, **kwargs)
    if cfg.init.imagenet_weights:
        log.info(load_fp_weights_file(model, cfg.init.imagenet_weights, load_head=False).summary())
    return ModelEntry(cfg.model.name, kwargs, model)


def _any_precision_models(cfg: APConfig, num_classes: int) -> dict[str, ModelEntry]:
    q = cfg.quant
    kwargs = {"num_classes": num_classes, "dropout": cfg.model.dropout, "bit_widths": list(q.bit_widths),
              "switchable_bn": q.switchable_bn, "switchable_clip": q.switchable_clip, "clip_init": q.clip_init,
              "mean_aligned": q.mean_aligned}
    model = create_model(cfg.model.name, **kwargs)
    entries = {"model": ModelEntry(cfg.model.name, kwargs, model)}
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
            entries["teacher"] = ModelEntry(fp_entry["name"], fp_entry["kwargs"], teacher.eval())
    elif cfg.init.imagenet_weights:
        log.info(load_fp_weights_file(model, cfg.init.imagenet_weights, load_head=False).summary())
    if cfg.loss.teacher and "teacher" not in entries:
        raise ConfigError("loss.teacher: the KD teacher is the fp stage's model; set init.backbone_checkpoint")
    return entries


def _policy_models(cfg: PolicyConfig, num_classes: int) -> tuple[dict[str, ModelEntry], VideoIQ]:
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
    entries = {"model": ModelEntry(bb_entry["name"], bb_entry["kwargs"], backbone)}
    teacher = None
    if cfg.loss.teacher or cfg.policy.fp_action:
        teacher = load_role(ckpt, "teacher", source)
        entries["teacher"] = ModelEntry(ckpt["models"]["teacher"]["name"], ckpt["models"]["teacher"]["kwargs"], teacher)
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
    entries["policy"] = ModelEntry(p.model, pkw, policy)
    model = VideoIQ(backbone, policy, precisions=precisions, teacher=teacher, fp_action=p.fp_action)
    return entries, model


class _Parts(NamedTuple):
    """What a stage builder returns, for :func:`build_stage` to finish."""

    entries: dict[str, ModelEntry]
    task: Task
    groups: list[dict[str, Any]]
    evaluate: Callable[..., Evaluation]  # (batches, device, labels, num_classes, amp) -> Evaluation
    extra: dict[str, Any]


def _build_recognition(cfg: FPConfig | PolicyPretrainConfig, data: StageData) -> _Parts:
    entry = _recognition_model(cfg, data.num_classes)
    return _Parts({"model": entry}, FPTask(entry.module), single_group(entry.module, cfg.optim),
                  functools.partial(evaluate_widths, entry.module, None), {})


def _build_any_precision(cfg: APConfig, data: StageData) -> _Parts:
    entries = _any_precision_models(cfg, data.num_classes)
    model, teacher = entries["model"].module, entries["teacher"].module if "teacher" in entries else None
    task = AnyPrecisionTask(model, cfg.quant.bit_widths, teacher, cfg.loss.kind, cfg.loss.kd_weight)
    return _Parts(entries, task, any_precision_groups(model, cfg.optim),
                  functools.partial(evaluate_widths, model, tuple(cfg.quant.bit_widths)), {})


def _build_policy(cfg: PolicyConfig, data: StageData) -> _Parts:
    entries, model = _policy_models(cfg, data.num_classes)
    task = PolicyTask(model, cfg.loss, cfg.policy.temperature_init, cfg.policy.temperature_decay)
    cost = video_cost(model.backbone, model.policy, num_frames=cfg.data.num_frames * cfg.data.frames_per_segment,
                      input_size=cfg.data.input_size)
    return _Parts(entries, task, policy_groups(model.policy, cfg.optim),
                  functools.partial(evaluate_policy, model, cost, data.kinds),
                  {"actions": list(model.actions), "precisions": list(model.precisions)})


BUILDERS: dict[str, Callable[[Any, StageData], _Parts]] = {
    "fp": _build_recognition, "policy_pretrain": _build_recognition, "ap": _build_any_precision,
    "policy": _build_policy}


def build_stage(cfg: StageConfig, data: StageData, device: torch.device | str = "cpu") -> Stage:
    """Models, task, optimizer, schedule and validation pass of a training stage (fp, ap, policy_pretrain, policy)
    on its ``data``."""
    if cfg.STAGE not in BUILDERS:
        raise ConfigError(f"stage {cfg.STAGE!r} does not train; run it with the eval launcher")
    num_classes, val_labels = data.num_classes, data.val_labels
    if getattr(getattr(cfg, "model", None), "num_classes", None) not in (None, num_classes):
        raise ConfigError(f"model.num_classes: {cfg.model.num_classes}, but the data has {num_classes} classes")
    parts = BUILDERS[cfg.STAGE](cfg, data)
    optimizer = build_optimizer(parts.groups, cfg.optim)
    memory_format = torch.channels_last if cfg.speed.channels_last else torch.preserve_format
    for entry in parts.entries.values():
        entry.module.to(device, memory_format=memory_format)

    def evaluate(batches: Iterable[dict[str, Tensor]], dev: torch.device) -> Evaluation:
        return parts.evaluate(batches, dev, val_labels, num_classes, cfg.speed.amp)

    return Stage(cfg, parts.task, optimizer, build_scheduler(optimizer, cfg.optim), parts.entries, data, evaluate,
                 parts.extra)
