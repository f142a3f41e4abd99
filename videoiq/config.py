"""Typed stage configurations: one dataclass per stage, built from shared sections, YAML in and out.

Stages and their config classes: ``fp`` :class:`FPConfig`, ``ap`` :class:`APConfig`,
``policy_pretrain`` :class:`PolicyPretrainConfig`, ``policy`` :class:`PolicyStageConfig` and
``eval`` :class:`EvalConfig`. Each is made of shared sections (``model``, ``quant``, ``data``,
``optim``, ``loss``, ``policy``, ``init``, ``logging``, ``ray``, ``eval``) whose defaults are the
paper's values, so a stage YAML only states what differs.

* :func:`load_config` reads a YAML file whose ``stage:`` key picks the class, then applies dotted
  ``--set`` overrides (``optim.lr=0.001``, ``quant.bit_widths=[32,4,2]``; values are YAML).
* Every key is checked: an unknown key is an error naming the nearest valid one, a value of the
  wrong type names the field and the expected type, an impossible value (bit width 0, a negative
  weight) names the field and the allowed range. All problems are reported at once.
* :func:`config_to_dict` gives the plain nested dict that goes to Ray and into checkpoints;
  :func:`config_from_dict` rebuilds the same object from it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from .atomic import write_text_atomic
from .quant import check_bit_widths


class ConfigError(ValueError):
    """A config file, key or value that is not valid; the message names where and what was expected."""


def _below(section: Any, minimum: float, *names: str, strict: bool = False) -> list[str]:
    """``"<field>: must be >= minimum, got v"`` for each named field below ``minimum`` (``>`` if strict)."""
    out = []
    for n in names:
        value = getattr(section, n)
        if not (value > minimum if strict else value >= minimum):  # "not" so NaN fails too
            out.append(f"{n}: must be {'>' if strict else '>='} {minimum}, got {value}")
    return out


def _fraction(section: Any, *names: str) -> list[str]:
    """``"<field>: must lie in [0, 1)"`` for each named field outside it (dropout, momentum)."""
    return [f"{n}: must lie in [0, 1), got {getattr(section, n)}" for n in names if not 0.0 <= getattr(section, n) < 1.0]


# --------------------------------------------------------------------------------------------------
# Sections


@dataclass
class ModelConfig:
    """The recognition model trained by the stage (a name in ``videoiq.models.list_models()``)."""

    name: str = "resnet50"
    num_classes: int | None = None  # None: the dataset's class count
    dropout: float = 0.5

    def problems(self) -> list[str]:
        out = _fraction(self, "dropout")
        if self.num_classes is not None:
            out += _below(self, 1, "num_classes")
        return out


@dataclass
class QuantConfig:
    """Any-precision settings: the precision family (master width first) and switchable parts."""

    bit_widths: tuple[int, ...] = (32, 4, 2)  # --w/a_bit_width_family; descending
    switchable_bn: bool = True  # --switch_bn
    switchable_clip: bool = True  # --switch_clipval
    clip_init: float = 2.0  # --q_init
    mean_aligned: bool = False  # --mean_aligned

    def problems(self) -> list[str]:
        out = []
        try:
            check_bit_widths(self.bit_widths, "bit_widths")
        except ValueError as e:
            out.append(str(e))
        return out + _below(self, 0, "clip_init", strict=True)


@dataclass
class DataConfig:
    """Where the videos are and how clips are sampled and batched."""

    dataset: str = "activitynet"  # a name in videoiq.data.DATASETS
    root: str = ""  # folder with the <split>.lmdb databases
    train_split: str = "train"
    val_split: str = "val"
    num_frames: int = 16  # --groups: segments (frames) per video
    frames_per_segment: int = 1  # --frames_per_group
    input_size: int = 224
    scale_up: bool = False  # eval: resize the short side to input_size/0.875 (False: --disable_scaleup)
    batch_size: int = 72  # global, across all training workers
    num_workers: int = 4  # data-loading processes per training worker
    segment_offsets: Literal["independent", "shared"] = "independent"  # "shared": the original's sampler
    decoder: Literal["simplejpeg", "pil"] = "simplejpeg"
    on_error: Literal["fail", "skip"] = "fail"  # a bad record stops training, or is skipped and counted

    def lmdb_path(self, split: str) -> str:
        """The database of a split: ``<root>/<split>.lmdb``."""
        return os.path.join(self.root, f"{split}.lmdb")

    def problems(self) -> list[str]:
        from .data.specs import DATASETS

        out = []
        if self.dataset not in DATASETS:
            close = difflib.get_close_matches(self.dataset, list(DATASETS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(f"dataset: unknown dataset {self.dataset!r}{hint}; known: {', '.join(DATASETS)}")
        out += _below(self, 1, "num_frames", "frames_per_segment", "batch_size")
        return out + _below(self, 16, "input_size") + _below(self, 0, "num_workers")


@dataclass
class OptimConfig:
    """SGD with momentum and a per-epoch cosine schedule; per-bit PACT clip groups; policy groups."""

    epochs: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    scheduler: Literal["cosine", "constant"] = "cosine"
    clip_lr: dict[int, float] = field(default_factory=dict)  # --q_lr, keyed by activation bit width
    clip_weight_decay: dict[int, float] = field(default_factory=dict)  # --q_weight-decay
    policy_lr: float = 1e-3  # --p_lr: LSTM, action head, auxiliary classifier
    policy_backbone_lr: float = 1e-5  # --p_b_lr: the policy's MobileNetV2
    bn_recalibration: int = 0  # fp/ap: after the last epoch, BN statistics averaged over this many batches
    val_every: int = 1  # validate after every N-th epoch and always after the last

    def problems(self) -> list[str]:
        out = _below(self, 1, "epochs", "val_every") + _fraction(self, "momentum") + _below(self, 0, "bn_recalibration")
        out += _below(self, 0, "lr", "weight_decay", "policy_lr", "policy_backbone_lr")
        for name in ("clip_lr", "clip_weight_decay"):
            negative = {k: v for k, v in getattr(self, name).items() if v < 0}
            if negative:
                out.append(f"{name}: values must be >= 0, got {negative}")
        return out


@dataclass
class LossConfig:
    """Loss terms and weights; a weight of 0 disables its term (the original's on/off flags)."""

    kind: Literal["ce", "kd", "kd_ce"] = "ce"  # --loss_type
    kd_weight: float = 1.0
    teacher: bool = False  # --is_32fp: distil from a frozen full-precision teacher
    kd_frames: Literal["all", "kept"] = "all"  # policy: KD target from all frames (original) or the kept ones
    efficiency_weight: float = 0.0  # --efficient_w
    balance_weight: float = 0.0  # --balanced_w
    entropy_weight: float = 0.0  # --entropy_w
    policy_ce_weight: float = 0.0  # --policy_w, with the policy's auxiliary classifier

    def problems(self) -> list[str]:
        return _below(self, 0, "kd_weight", "efficiency_weight", "balance_weight", "entropy_weight", "policy_ce_weight")


@dataclass
class PolicyConfig:
    """The policy network and its action space."""

    model: str = "policy_mobilenet_v2"
    precisions: tuple[int, ...] | None = None  # actions: a subset of the backbone's family; None: all
    fp_action: bool = False  # --use_fp_as_bb: the frozen teacher is an extra action
    skip_choices: tuple[int, ...] = ()  # --skip_list
    hidden_size: int = 512
    input_size: int = 84
    dropout: float = 0.8
    aux_classifier: bool = True  # --is_policy_pred
    temperature_init: float = 5.0
    temperature_decay: float = 0.956  # --temperature_decay_rate, per epoch

    def problems(self) -> list[str]:
        out = []
        if self.precisions is not None:
            try:
                check_bit_widths(self.precisions, "precisions")
            except ValueError as e:
                out.append(str(e))
        if any(s < 1 for s in self.skip_choices) or len(set(self.skip_choices)) != len(self.skip_choices):
            out.append(f"skip_choices: must be distinct lengths >= 1, got {list(self.skip_choices)}")
        out += _below(self, 1, "hidden_size") + _below(self, 16, "input_size") + _fraction(self, "dropout")
        out += _below(self, 0, "temperature_init", strict=True)
        if not 0.0 < self.temperature_decay <= 1.0:
            out.append(f"temperature_decay: must lie in (0, 1], got {self.temperature_decay}")
        return out


@dataclass
class InitConfig:
    """Where the stage's starting weights come from: local files only, nothing is downloaded."""

    imagenet_weights: str | None = None  # torchvision-format ImageNet state dict
    backbone_checkpoint: str | None = None  # ap: the fp checkpoint; policy: the ap checkpoint
    policy_backbone_checkpoint: str | None = None  # policy: the policy_pretrain checkpoint

    def problems(self) -> list[str]:
        return []


@dataclass
class LoggingConfig:
    """Weights & Biases and console logging (a local JSONL metrics file is always written)."""

    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online with an API key
    project: str = "videoiq"
    group: str | None = None
    log_every: int = 20  # steps between progress lines

    def problems(self) -> list[str]:
        return _below(self, 1, "log_every")


@dataclass
class RayConfig:
    """Ray Train scaling, storage, checkpoints and fault tolerance."""

    num_workers: int = 1  # 0: run in-process without Ray
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = "runs"
    name: str | None = None  # run name; None: derived from the stage and dataset
    num_to_keep: int = 2
    max_failures: int = 0

    def problems(self) -> list[str]:
        out = _below(self, 0, "num_workers", "max_failures") + _below(self, 1, "num_to_keep")
        return out + _below(self, 0, "cpus_per_worker", strict=True)


@dataclass
class SpeedConfig:
    """Optional speed-ups of training and evaluation; each is off by default (``videoiq bench train``
    measures them on your machine before you switch one on)."""

    amp: Literal["off", "bf16"] = "off"  # autocast forward and losses in bfloat16 (CPU and GPU)
    channels_last: bool = False  # NHWC memory format for the convolutions
    compile: bool = False  # torch.compile the step's module (minutes of compiling first; pays off on long runs)

    def problems(self) -> list[str]:
        return []


@dataclass
class EvalSection:
    """What to evaluate and how policy decisions are taken."""

    checkpoint: str = ""  # a policy-stage checkpoint
    decisions: Literal["argmax", "sampled"] = "argmax"  # the original sampled
    num_samples: int = 5  # runs averaged (mean and spread) when decisions are sampled
    num_clips: int = 1
    num_crops: int = 1

    def problems(self) -> list[str]:
        return _below(self, 1, "num_samples", "num_clips", "num_crops")


# --------------------------------------------------------------------------------------------------
# Stages


@dataclass
class StageConfig:
    """Fields every stage has; subclasses add their sections."""

    STAGE: ClassVar[str] = ""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)

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
            raise ConfigError(f"invalid {self.STAGE} config:\n  - " + "\n  - ".join(problems))

    def stage_problems(self) -> list[str]:
        """Checks that involve several sections."""
        return []

    REQUIRED_INPUTS: ClassVar[tuple[str, ...]] = ("data.root",)
    OPTIONAL_INPUTS: ClassVar[tuple[str, ...]] = ()

    def input_problems(self) -> list[str]:
        """Inputs a run needs that are unset or missing on disk (checked before a run, not on load)."""
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
                if not Path(self.data.lmdb_path(split), "data.mdb").exists():
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
    from .models import list_models

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
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    init: InitConfig = field(default_factory=InitConfig)

    def stage_problems(self) -> list[str]:
        out = [p for p in [_recognition_model_problem(self.model.name, any_precision=False)] if p]
        if self.loss.kind != "ce" or self.loss.teacher or self.loss.kd_frames != "all":
            out.append("loss: a full-precision stage trains with plain cross-entropy (kind: ce, teacher: false)")
        return out


def _ap_optim() -> OptimConfig:
    return OptimConfig(clip_lr={32: 0.1, 4: 0.1, 2: 0.01}, clip_weight_decay={32: 5e-4, 4: 5e-4, 2: 6e-2})


@dataclass
class APConfig(StageConfig):
    """Stage 2: the any-precision ResNet, CE + KD from the frozen stage-1 model at every width."""

    STAGE: ClassVar[str] = "ap"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="ap_resnet50"))
    quant: QuantConfig = field(default_factory=QuantConfig)
    optim: OptimConfig = field(default_factory=_ap_optim)
    loss: LossConfig = field(default_factory=lambda: LossConfig(kind="kd_ce", teacher=True))
    init: InitConfig = field(default_factory=InitConfig)

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

    OPTIONAL_INPUTS: ClassVar[tuple[str, ...]] = ("init.backbone_checkpoint", "init.imagenet_weights")

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
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="mobilenet_v2"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    init: InitConfig = field(default_factory=InitConfig)

    def stage_problems(self) -> list[str]:
        out = [p for p in [_recognition_model_problem(self.model.name, any_precision=False)] if p]
        if not self.model.name.startswith("mobilenet_v2"):
            out.append(f"model.name: the policy backbone is a MobileNetV2 (mobilenet_v2*), got {self.model.name!r}")
        if self.loss.kind != "ce" or self.loss.teacher or self.loss.kd_frames != "all":
            out.append("loss: policy pre-training uses plain cross-entropy (kind: ce, teacher: false)")
        return out


def _policy_optim() -> OptimConfig:
    return OptimConfig(epochs=50, policy_lr=0.01, policy_backbone_lr=1e-5)


def _policy_loss() -> LossConfig:
    return LossConfig(
        kind="kd_ce", teacher=True, efficiency_weight=0.16, balance_weight=1.0, policy_ce_weight=1.0
    )


@dataclass
class PolicyStageConfig(StageConfig):
    """Stage 4: the policy on the frozen any-precision backbone (read from its checkpoint)."""

    STAGE: ClassVar[str] = "policy"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    quant: QuantConfig | None = None  # None: the family stored in the ap checkpoint; else must match it
    optim: OptimConfig = field(default_factory=_policy_optim)
    loss: LossConfig = field(default_factory=_policy_loss)
    init: InitConfig = field(default_factory=InitConfig)

    def stage_problems(self) -> list[str]:
        from .models import list_models

        out = []
        if self.policy.model not in list_models(kind="policy"):
            out.append(f"policy.model: unknown policy model {self.policy.model!r}; known: {', '.join(list_models(kind='policy'))}")
        if self.quant is not None and self.policy.precisions is not None:
            outside = [b for b in self.policy.precisions if b not in self.quant.bit_widths]
            if outside:
                out.append(f"policy.precisions: {outside} are not in quant.bit_widths {list(self.quant.bit_widths)}")
        if self.policy.fp_action and not self.loss.teacher:
            out.append("policy.fp_action: offers the frozen full-precision teacher as an action, so loss.teacher must be true")
        if self.optim.bn_recalibration:
            out.append("optim.bn_recalibration: the policy stage's backbone is frozen; recalibrate it in the ap stage")
        if self.loss.policy_ce_weight > 0 and not self.policy.aux_classifier:
            out.append("loss.policy_ce_weight: needs the policy's auxiliary classifier (policy.aux_classifier: true)")
        return out

    REQUIRED_INPUTS: ClassVar[tuple[str, ...]] = ("data.root", "init.backbone_checkpoint")
    OPTIONAL_INPUTS: ClassVar[tuple[str, ...]] = ("init.policy_backbone_checkpoint",)


@dataclass
class EvalConfig(StageConfig):
    """Evaluation of a policy-stage checkpoint: mAP, top-1, GFLOPs per video, precision usage."""

    STAGE: ClassVar[str] = "eval"
    eval: EvalSection = field(default_factory=EvalSection)

    REQUIRED_INPUTS: ClassVar[tuple[str, ...]] = ("data.root", "eval.checkpoint")

    def _splits(self) -> tuple[str, ...]:
        return (self.data.val_split,)


STAGES: dict[str, type[StageConfig]] = {
    c.STAGE: c for c in (FPConfig, APConfig, PolicyPretrainConfig, PolicyStageConfig, EvalConfig)
}


# --------------------------------------------------------------------------------------------------
# dict <-> dataclass with type checks


def _suggest(key: str, options: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert containers; raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = args
        out = {}
        for k, v in value.items():
            if key_tp is int and isinstance(k, str) and k.strip().lstrip("-").isdigit():
                k = int(k)
            out[_coerce(k, key_tp, f"{where} key {k!r}")] = _coerce(v, val_tp, f"{where}[{k!r}]")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string, so numeric strings are accepted here.
        number = _as_float(value)
        if number is None or not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        prefix = f"{where}." if where else ""
        k = str(unknown[0])
        hint = _suggest(k, fields, prefix)
        raise ConfigError(f"unknown key {prefix + k!r}{hint} Valid keys: {', '.join(fields)}")
    data = dict(data)
    if issubclass(cls, StageConfig):
        # A section given in a file is merged over the *stage's* defaults for that section (a
        # policy YAML that sets only optim.epochs keeps the policy's own learning rates).
        for name, value in data.items():
            factory = fields[name].default_factory
            if isinstance(value, Mapping) and factory is not dataclasses.MISSING:
                data[name] = {**_plain(factory()), **value}
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> StageConfig:
    """Build and validate a stage config from a nested dict with a ``stage`` key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping of sections, got {type(data).__name__}")
    body = dict(data)
    stage = body.pop("stage", None)
    if stage is None:
        raise ConfigError(f"{source}: missing the 'stage' key (one of {', '.join(STAGES)})")
    if stage not in STAGES:
        raise ConfigError(f"{source}: unknown stage {stage!r}{_suggest(str(stage), STAGES)} Stages: {', '.join(STAGES)}")
    try:
        return _build(STAGES[stage], body, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_dict(cfg: StageConfig) -> dict[str, Any]:
    """The plain nested dict of a config, ``stage`` first (for YAML, Ray and checkpoints)."""
    return {"stage": cfg.STAGE, **_plain(cfg)}


# The fields that name files or folders: relative ones mean the launching process's working directory.
PATH_FIELDS = (("data", "root"), ("init", "imagenet_weights"), ("init", "backbone_checkpoint"),
               ("init", "policy_backbone_checkpoint"), ("eval", "checkpoint"), ("ray", "storage_path"))


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
    return config_from_dict({"stage": stage, **{k: _plain(v) for k, v in sections.items()}}, f"defaults of {stage}")


# --------------------------------------------------------------------------------------------------
# YAML files and overrides


def _schema_check(cls: type, path: list[str], source: str) -> None:
    """Fail early, with a suggestion, when an override names a key the stage does not have."""
    tp: Any = cls
    for i, key in enumerate(path):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if not dataclasses.is_dataclass(tp) and inner:
            tp = inner[0]
        if not dataclasses.is_dataclass(tp):
            return  # inside a dict-valued field (e.g. optim.clip_lr.4): checked when building
        names = [f.name for f in dataclasses.fields(tp) if f.init]
        if key not in names:
            dotted = ".".join(path[: i + 1])
            hint = _suggest(key, names, "".join(f"{p}." for p in path[:i]))
            raise ConfigError(f"{source}: unknown key {dotted!r}{hint} Valid here: {', '.join(names)}")
        tp = typing.get_type_hints(tp)[key]


def parse_override(item: str, source: str = "--set") -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value)``, the value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"{source} {item!r}: expected key=value, e.g. optim.lr=0.001")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} {item!r}: value is not valid YAML: {e}") from None


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a raw config dict; values are parsed as YAML."""
    for item in overrides:
        key, value = parse_override(item, source)
        set_value(data, key, value, f"{source} {item!r}")
    return data


def set_value(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set the dotted ``key`` of a raw config dict to ``value``, checking the key against the stage's
    schema (``source`` names where the key came from in errors)."""
    stage = data.get("stage")
    cls = STAGES.get(stage) if isinstance(stage, str) else None
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"{source}: empty key segment")
    if path == ["stage"]:
        raise ConfigError(f"{source}: the stage comes from the config file, it cannot be overridden")
    if cls is not None:
        _schema_check(cls, path, source)
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` (no Python objects), with file-named errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> StageConfig:
    """Load a stage config from YAML (its ``stage:`` key picks the class) and apply ``--set`` overrides."""
    data = apply_overrides(read_yaml(path), overrides)
    return config_from_dict(data, str(path))


def config_changes(cfg: StageConfig) -> dict[str, Any]:
    """Only what differs from the stage's defaults, as a nested dict with ``stage`` first."""
    full = config_to_dict(cfg)
    base = config_to_dict(type(cfg)())
    out: dict[str, Any] = {"stage": cfg.STAGE}
    for key, value in full.items():
        if key == "stage" or value == base.get(key):
            continue
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = {k: v for k, v in value.items() if v != base[key].get(k)}
        else:
            out[key] = value
    return out


def dump_yaml(cfg: StageConfig, *, changes_only: bool = False) -> str:
    """The config as YAML text, sections in declaration order (or only the non-default values)."""
    data = config_changes(cfg) if changes_only else config_to_dict(cfg)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def save_config(cfg: StageConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML atomically (a crash never leaves a half-written file)."""
    return write_text_atomic(path, dump_yaml(cfg))
