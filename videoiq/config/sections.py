"""The sections a stage config is made of (``model``, ``quant``, ``data``, ``optim``, ``loss``, ``policy``,
``init``, ``logging``, ``run``, ``ray``, ``speed``, ``eval``): one dataclass each, defaults from the paper, and each
one's own checks (``problems()``: every value out of range, named by field).
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from ..quant import check_bit_widths


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
    return [f"{n}: must lie in [0, 1), got {getattr(section, n)}" for n in names
            if not 0.0 <= getattr(section, n) < 1.0]


@dataclass
class ModelSection:
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
class QuantSection:
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
class DataSection:
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
        from ..data.specs import DATASETS

        out = []
        if self.dataset not in DATASETS:
            close = difflib.get_close_matches(self.dataset, list(DATASETS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(f"dataset: unknown dataset {self.dataset!r}{hint}; known: {', '.join(DATASETS)}")
        out += _below(self, 1, "num_frames", "frames_per_segment", "batch_size")
        return out + _below(self, 16, "input_size") + _below(self, 0, "num_workers")


@dataclass
class OptimSection:
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
class LossSection:
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
class PolicySection:
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
class InitSection:
    """Where the stage's starting weights come from: local files only, nothing is downloaded."""

    imagenet_weights: str | None = None  # torchvision-format ImageNet state dict
    backbone_checkpoint: str | None = None  # ap: the fp checkpoint; policy: the ap checkpoint
    policy_backbone_checkpoint: str | None = None  # policy: the policy_pretrain checkpoint

    def problems(self) -> list[str]:
        return []


@dataclass
class LoggingSection:
    """Weights & Biases and console logging (a local JSONL metrics file is always written)."""

    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online with an API key
    project: str = "videoiq"
    group: str | None = None
    log_every: int = 20  # steps between progress lines

    def problems(self) -> list[str]:
        return _below(self, 1, "log_every")


@dataclass
class RunSection:
    """Where a stage's run lives and how it treats an earlier run there: the same in-process and on Ray."""

    storage_path: str = "runs"  # runs live in <storage_path>/<name>
    name: str | None = None  # run name; None: derived from the stage and dataset
    use_gpu: bool = False  # train and evaluate on CUDA (on Ray: one GPU per Train worker)
    # a run folder whose checkpoint was built from other data, input checkpoints or settings (train/lineage.py):
    # refuse naming the changes, retrain from scratch (the old folder moved aside), or keep going from it as it is
    changed_inputs: Literal["refuse", "retrain", "keep"] = "refuse"

    def problems(self) -> list[str]:
        return [] if self.storage_path else ["storage_path: must name a folder"]


@dataclass
class RaySection:
    """Ray Train scaling, checkpoints kept and fault tolerance (``num_workers: 0`` runs in-process, without Ray)."""

    num_workers: int = 1  # 0: run in-process without Ray
    cpus_per_worker: float = 1.0
    # Ray's layout of the worker group over nodes: PACK (Ray's default) fills as few nodes as it can;
    # STRICT_SPREAD gives each worker a node of its own (each machine's CPUs/GPU and network to one worker)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    num_to_keep: int = 2
    max_failures: int = 0

    def problems(self) -> list[str]:
        out = _below(self, 0, "num_workers", "max_failures") + _below(self, 1, "num_to_keep")
        return out + _below(self, 0, "cpus_per_worker", strict=True)


@dataclass
class SpeedSection:
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
    engine: Literal["float", "int8"] = "float"  # int8: the quantized widths on integer CPU kernels (ap/policy)

    def problems(self) -> list[str]:
        return _below(self, 1, "num_samples", "num_clips", "num_crops")
