"""The five stage configs (``fp`` :class:`FPConfig`, ``ap`` :class:`APConfig`, ``policy_pretrain``
:class:`PolicyPretrainConfig`, ``policy`` :class:`PolicyConfig`, ``eval`` :class:`EvalConfig`), each made of
sections with the stage's own defaults, the checks across sections and of a run's inputs, and conversion to
and from plain dicts.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ._typed import ConfigError, build, plain, suggest
from .sections import (
    DataSection,
    EvalSection,
    InitSection,
    LoggingSection,
    LossSection,
    ModelSection,
    OptimSection,
    PolicySection,
    QuantSection,
    RaySection,
    RunSection,
    SpeedSection,
)

log = logging.getLogger("videoiq.config")

# keys that moved: the run-wide keys apply in-process too, so they left the ``ray`` section. The old spelling
# still works, in files, --set, sweeps and the configs of older checkpoints, and says once which key to use.
RENAMED = {f"ray.{key}": f"run.{key}" for key in ("storage_path", "name", "use_gpu", "changed_inputs")}
_told: set[str] = set()


def renamed_key(key: str, source: str) -> str:
    """The current name of dotted ``key`` (the same key unless it moved), saying once per key that it moved."""
    new = RENAMED.get(key)
    if new is None:
        return key
    if key not in _told:
        _told.add(key)
        log.warning("%s: %s is now %s; the old name still works, but use the new one", source, key, new)
    return new


@dataclass
class StageConfig:
    """Fields every stage has; subclasses add their sections."""

    STAGE: ClassVar[str] = ""
    REQUIRED_INPUTS: ClassVar[tuple[str, ...]] = ("data.root",)  # dotted keys naming files a run reads
    OPTIONAL_INPUTS: ClassVar[tuple[str, ...]] = ()  # checked only when set
    MERGE_SECTION_DEFAULTS: ClassVar[bool] = True  # a section in a file is merged over this stage's defaults
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    run: RunSection = field(default_factory=RunSection)
    ray: RaySection = field(default_factory=RaySection)
    speed: SpeedSection = field(default_factory=SpeedSection)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every problem (call again after editing fields)."""
        problems = []
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                problems += [f"{f.name}.{p}" for p in section.problems()]
        problems += self.stage_problems()
        if problems:
            raise ConfigError(f"invalid {self.STAGE} config:\n  - " + "\n  - ".join(problems), problems)

    def stage_problems(self) -> list[str]:
        """Checks that involve several sections."""
        return []

    def input_problems(self) -> list[str]:
        """Inputs a run needs that are unset or missing on disk (checked before a run, not on load)."""
        from ..data.shards import is_sharded

        out = []
        for key in self.REQUIRED_INPUTS + self.OPTIONAL_INPUTS:
            value = self.get(key)
            if not value:
                if key in self.REQUIRED_INPUTS:
                    out.append(f"{key}: not set")
            elif not Path(value).exists():
                out.append(f"{key}: {value!r} does not exist")
        if self.data.root and Path(self.data.root).exists():
            for split in dict.fromkeys(self._splits()):
                found = self.data.lmdb_path(split)
                if not (Path(found, "data.mdb").exists() or is_sharded(found)):
                    out.append(f"data.root: no {split}.lmdb database in {self.data.root!r} "
                               "(convert one with `videoiq data build`)")
        return out

    def check_inputs(self, where: str = "") -> None:
        """Raise a :class:`ConfigError` listing every :meth:`input_problems`, if there are any (``where``:
        the config file, to name in the message)."""
        problems = self.input_problems()
        if problems:
            raise ConfigError((f"{where}: " if where else "") + "inputs not ready:\n  - " + "\n  - ".join(problems))

    def _splits(self) -> tuple[str, ...]:
        """The data splits a run of this stage reads."""
        return (self.data.train_split, self.data.val_split)

    def get(self, dotted: str) -> Any:
        """The value of a dotted key, e.g. ``cfg.get("optim.lr")``."""
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node


def _recognition_model_problem(name: str, any_precision: bool | None) -> str | None:
    from ..models import list_models

    names = list_models(kind="recognition")
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"model.name: unknown recognition model {name!r}{hint}; known: {', '.join(names)}"
    if any_precision is True and not name.startswith("ap_"):
        return f"model.name: this stage trains an any-precision model (ap_*), got {name!r}"
    if any_precision is False and name.startswith("ap_"):
        return f"model.name: this stage trains a full-precision model, got the any-precision {name!r}"
    return None


@dataclass
class FPConfig(StageConfig):
    """Stage 1: the full-precision TSN ResNet, cross-entropy."""

    STAGE: ClassVar[str] = "fp"
    OPTIONAL_INPUTS: ClassVar[tuple[str, ...]] = ("init.imagenet_weights",)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    init: InitSection = field(default_factory=InitSection)

    def stage_problems(self) -> list[str]:
        out = [p for p in [_recognition_model_problem(self.model.name, any_precision=False)] if p]
        if self.loss.kind != "ce" or self.loss.teacher or self.loss.kd_frames != "all":
            out.append("loss: a full-precision stage trains with plain cross-entropy (kind: ce, teacher: false)")
        return out


def _ap_optim() -> OptimSection:
    return OptimSection(clip_lr={32: 0.1, 4: 0.1, 2: 0.01}, clip_weight_decay={32: 5e-4, 4: 5e-4, 2: 6e-2})


@dataclass
class APConfig(StageConfig):
    """Stage 2: the any-precision ResNet, CE + KD from the frozen stage-1 model at every width."""

    STAGE: ClassVar[str] = "ap"
    OPTIONAL_INPUTS: ClassVar[tuple[str, ...]] = ("init.backbone_checkpoint", "init.imagenet_weights")
    model: ModelSection = field(default_factory=lambda: ModelSection(name="ap_resnet50"))
    quant: QuantSection = field(default_factory=QuantSection)
    optim: OptimSection = field(default_factory=_ap_optim)
    loss: LossSection = field(default_factory=lambda: LossSection(kind="kd_ce", teacher=True))
    init: InitSection = field(default_factory=InitSection)

    def stage_problems(self) -> list[str]:
        out = [p for p in [_recognition_model_problem(self.model.name, any_precision=True)] if p]
        if self.loss.kd_frames != "all":
            out.append("loss.kd_frames: the ap stage distils every width on all frames; 'kept' is for the policy stage")
        family = set(self.quant.bit_widths)
        for name in ("clip_lr", "clip_weight_decay"):
            keys = set(getattr(self.optim, name))
            if keys != family:
                out.append(
                    f"optim.{name}: needs one value per bit width {sorted(family, reverse=True)}, "
                    f"got keys {sorted(keys, reverse=True)}"
                )
        return out

    def input_problems(self) -> list[str]:
        out = super().input_problems()
        if not self.init.backbone_checkpoint and not self.init.imagenet_weights:
            out.append(
                "init.backbone_checkpoint: not set; the initial weights and the KD teacher come from the "
                "fp stage's checkpoint (or from init.imagenet_weights, a torchvision ResNet file)"
            )
        return out


@dataclass
class PolicyPretrainConfig(StageConfig):
    """Stage 3: the full-precision TSN MobileNetV2 whose features the policy starts from."""

    STAGE: ClassVar[str] = "policy_pretrain"
    OPTIONAL_INPUTS: ClassVar[tuple[str, ...]] = ("init.imagenet_weights",)
    model: ModelSection = field(default_factory=lambda: ModelSection(name="mobilenet_v2"))
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    init: InitSection = field(default_factory=InitSection)

    def stage_problems(self) -> list[str]:
        out = [p for p in [_recognition_model_problem(self.model.name, any_precision=False)] if p]
        if not self.model.name.startswith("mobilenet_v2"):
            out.append(f"model.name: the policy backbone is a MobileNetV2 (mobilenet_v2*), got {self.model.name!r}")
        if self.loss.kind != "ce" or self.loss.teacher or self.loss.kd_frames != "all":
            out.append("loss: policy pre-training uses plain cross-entropy (kind: ce, teacher: false)")
        return out


def _policy_optim() -> OptimSection:
    return OptimSection(epochs=50, policy_lr=0.01, policy_backbone_lr=1e-5)


def _policy_loss() -> LossSection:
    return LossSection(
        kind="kd_ce", teacher=True, efficiency_weight=0.16, balance_weight=1.0, policy_ce_weight=1.0
    )


@dataclass
class PolicyConfig(StageConfig):
    """Stage 4: the policy on the frozen any-precision backbone (read from its checkpoint)."""

    STAGE: ClassVar[str] = "policy"
    REQUIRED_INPUTS: ClassVar[tuple[str, ...]] = ("data.root", "init.backbone_checkpoint")
    OPTIONAL_INPUTS: ClassVar[tuple[str, ...]] = ("init.policy_backbone_checkpoint",)
    policy: PolicySection = field(default_factory=PolicySection)
    quant: QuantSection | None = None  # None: the family stored in the ap checkpoint; else must match it
    optim: OptimSection = field(default_factory=_policy_optim)
    loss: LossSection = field(default_factory=_policy_loss)
    init: InitSection = field(default_factory=InitSection)

    def stage_problems(self) -> list[str]:
        from ..models import list_models

        out = []
        if self.policy.model not in list_models(kind="policy"):
            out.append(f"policy.model: unknown policy model {self.policy.model!r}; "
                       f"known: {', '.join(list_models(kind='policy'))}")
        if self.quant is not None and self.policy.precisions is not None:
            outside = [b for b in self.policy.precisions if b not in self.quant.bit_widths]
            if outside:
                out.append(f"policy.precisions: {outside} are not in quant.bit_widths {list(self.quant.bit_widths)}")
        if self.policy.fp_action and not self.loss.teacher:
            out.append("policy.fp_action: offers the frozen full-precision teacher as an action, "
                       "so loss.teacher must be true")
        if self.optim.bn_recalibration:
            out.append("optim.bn_recalibration: the policy stage's backbone is frozen; recalibrate it in the ap stage")
        if self.loss.policy_ce_weight > 0 and not self.policy.aux_classifier:
            out.append("loss.policy_ce_weight: needs the policy's auxiliary classifier (policy.aux_classifier: true)")
        return out


@dataclass
class EvalConfig(StageConfig):
    """Evaluation of a policy-stage checkpoint: mAP, top-1, GFLOPs per video, precision usage."""

    STAGE: ClassVar[str] = "eval"
    REQUIRED_INPUTS: ClassVar[tuple[str, ...]] = ("data.root", "eval.checkpoint")
    eval: EvalSection = field(default_factory=EvalSection)

    def stage_problems(self) -> list[str]:
        if self.eval.engine == "int8" and self.speed.amp != "off":
            return ["eval.engine: int8 computes with integer kernels and its own float rescales; set speed.amp: off"]
        return []

    def _splits(self) -> tuple[str, ...]:
        return (self.data.val_split,)


STAGES: dict[str, type[StageConfig]] = {
    c.STAGE: c for c in (FPConfig, APConfig, PolicyPretrainConfig, PolicyConfig, EvalConfig)
}


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>", origins: Mapping[str, str] | None = None,
                     problems: list[str] | None = None, warn_renamed: bool = True) -> StageConfig:
    """Build and validate a stage config from a nested dict with a ``stage`` key.

    Every problem is reported at once, in one :class:`ConfigError`: ``problems`` already found (overrides that
    could not be applied) and each unknown key, wrong type and value out of range. Each is blamed on where its
    key was set: ``origins`` maps dotted keys to the override that set them, anything else is ``source``'s.
    Keys under an old name are moved to the new one, saying so once unless ``warn_renamed`` is off (a config
    a checkpoint recorded, which the user does not edit).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping of sections, got {type(data).__name__}")
    body = _current_names(dict(data), source, warn_renamed)
    stage = body.pop("stage", None)
    if stage is None:
        raise ConfigError(f"{source}: missing the 'stage' key (one of {', '.join(STAGES)})")
    if stage not in STAGES:
        raise ConfigError(f"{source}: unknown stage {stage!r}{suggest(str(stage), STAGES)} Stages: {', '.join(STAGES)}")
    found = list(problems or [])
    cfg = build(STAGES[stage], body, "", found)
    if found:
        lines = [_blame(p, source, origins or {}) for p in found]
        if len(lines) == 1:
            raise ConfigError(lines[0], lines)
        raise ConfigError(f"invalid {stage} config ({len(lines)} problems):\n  - " + "\n  - ".join(lines), lines)
    return cfg


def _current_names(body: dict[str, Any], source: str, warn: bool = True) -> dict[str, Any]:
    """``body`` with the keys that moved (:data:`RENAMED`) under their current names (a new dict where any moved)."""
    for old, new in RENAMED.items():
        (old_section, key), (new_section, _) = old.split("."), new.split(".")
        section = body.get(old_section)
        if not isinstance(section, Mapping) or key not in section:
            continue
        target = body.get(new_section) if isinstance(body.get(new_section), Mapping) else {}
        if key in target:
            raise ConfigError(f"{source}: both {old} and {new} are set; keep {new} only")
        body[old_section] = {k: v for k, v in section.items() if k != key}
        body[new_section] = {**target, key: section[key]}
        if warn:
            renamed_key(old, source)
    return body


def _blame(problem: str, source: str, origins: Mapping[str, str]) -> str:
    """``<where it was set>: <problem>``: the override that set the problem's key (or a section above it),
    else the config's source. A problem that already names its override is left as it is."""
    if problem.startswith("--set"):
        return problem
    key = problem.split(":", 1)[0].strip()
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        origin = origins.get(".".join(parts[:n]))
        if origin is not None:
            return f"{origin}: {problem}"
    return f"{source}: {problem}"


def config_to_dict(cfg: StageConfig) -> dict[str, Any]:
    """The plain nested dict of a config, ``stage`` first (for YAML, Ray and checkpoints)."""
    return {"stage": cfg.STAGE, **plain(cfg)}


# The fields that name files or folders: relative ones mean the launching process's working directory.
PATH_FIELDS = (("data", "root"), ("init", "imagenet_weights"), ("init", "backbone_checkpoint"),
               ("init", "policy_backbone_checkpoint"), ("eval", "checkpoint"), ("run", "storage_path"))


def absolute_paths(data: dict[str, Any]) -> dict[str, Any]:
    """Make the path fields of a config dict absolute, in place (Ray workers and Tune trials run in other
    working directories, where a relative path would name nothing or something else); returns ``data``."""
    for section, key in PATH_FIELDS:
        part = data.get(section)
        if isinstance(part, dict) and isinstance(part.get(key), str) and part[key]:
            part[key] = os.path.abspath(part[key])
    return data


def default_config(stage: str, **sections: Any) -> StageConfig:
    """The paper-default config of a stage (sections may be passed as dataclasses or dicts)."""
    return config_from_dict({"stage": stage, **{k: plain(v) for k, v in sections.items()}}, f"defaults of {stage}")
