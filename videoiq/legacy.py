"""Translate a command line of the original VideoIQ scripts into a videoiq stage config.

A user of sunxm2357/VideoIQ can paste a command such as
``python train_dist_ap.py --dataset activitynet --q_init 2 --backbone_net resnet_pact_ap -d 50 ...``
and get the equivalent config plus notes on what changed and why. The translation is faithful to
the original's behaviour, including its ``opts.py`` defaults for flags the command leaves out
: the result states every value explicitly.

The stage comes from the script name and ``--backbone_net`` (``-e`` makes it an evaluation).
Flags that the original ignored, or that videoiq handles differently, become notes; flags that
would change results in a way videoiq does not reproduce are errors. An unknown flag is an error.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError, StageConfig, config_from_dict


class LegacyFlagError(ConfigError):
    """A legacy command that cannot be translated; the message names the flag."""


_BOOL = (
    "--without_t_stride", "--disable_scaleup", "--multiprocessing-distributed", "--auto_resume", "--use_lmdb",
    "--no_imagenet_pretrained", "--evaluate", "--switch_bn", "--switch_clipval", "--is_32fp", "--efficient",
    "--balanced", "--entropy", "--is_policy_pred", "--use_fp_as_bb", "--deterministic", "--nesterov",
    "--mean_aligned",
)
_ONE = (
    "--dataset", "--backbone_net", "--depth", "--batch-size", "--workers", "--logdir", "--lr", "--epochs",
    "--lr_scheduler", "--momentum", "--weight-decay", "--dropout", "--groups", "--frames_per_group",
    "--input_size", "--datadir", "--imagenet_path", "--pretrained", "--loss_type", "--kd_weight", "--p_bit",
    "--p_lr", "--p_b_lr", "--efficient_w", "--balanced_w", "--entropy_w", "--policy_w", "--resnet_imagenet_path",
    "--mobilenet_imagenet_path", "--p_epochs", "--prefix", "--temperature_decay_rate", "--num_crops",
    "--num_clips",
)
_MANY = (
    "--w_bit_width_family", "--a_bit_width_family", "--bit_width_family", "--q_init", "--q_lr",
    "--q_weight-decay", "--skip_list",
)
_ALIASES = {"-d": "--depth", "-b": "--batch-size", "-j": "--workers", "-e": "--evaluate", "--q_wd": "--q_weight-decay"}

# The original opts.py defaults that matter when a command leaves a flag out.
ORIGINAL_DEFAULTS: dict[str, Any] = {
    "--depth": "18", "--batch-size": "256", "--lr": "0.01", "--epochs": "50", "--lr_scheduler": "cosine",
    "--momentum": "0.9", "--weight-decay": "5e-4", "--dropout": "0.5", "--groups": "16",
    "--frames_per_group": "1", "--input_size": "224", "--loss_type": "CE", "--kd_weight": "1", "--p_bit": "32",
    "--p_lr": "1e-3", "--p_b_lr": "1e-5", "--efficient_w": "0.001", "--balanced_w": "0.001",
    "--entropy_w": "0.001", "--policy_w": "1", "--temperature_decay_rate": "0.956", "--num_crops": "1",
    "--num_clips": "1", "--w_bit_width_family": ["8", "4"], "--a_bit_width_family": ["8", "4"],
    "--bit_width_family": ["8", "4"], "--q_init": ["2"], "--q_lr": ["0.1"], "--q_weight-decay": ["5e-4"],
    "--skip_list": [],
}

_SCRIPTS = {
    "train_dist.py": None,  # fp or policy_pretrain, by --backbone_net
    "train_dist_ap.py": "ap",
    "train_dist_ada.py": "policy",
    "test_ada.py": "eval",
}
_BACKBONES = {
    "resnet": "fp",
    "mobilenet_v2": "policy_pretrain",
    "resnet_pact_ap": "ap",
    "resnet_videoiq": "policy",
    "resnet_adaptive_quant2": "policy",  # the name the README's test command uses
}

# Notes for flags whose effect videoiq provides in another way; shown when the flag is present.
_NOTES = {
    "--multiprocessing-distributed":
        "--multiprocessing-distributed: DDP comes from Ray Train; set ray.num_workers and run.use_gpu",
    "--workers": "-j: the original's loader count was global; videoiq's data.num_workers is per training worker "
                 "(kept at its default)",
    "--without_t_stride": "--without_t_stride: always so; videoiq's TSN ResNet has no temporal pooling",
    "--auto_resume": "--auto_resume: always on; re-running the same command resumes from the last checkpoint",
    "--use_lmdb": "--use_lmdb: videoiq always reads its LMDB format (convert frame folders with `videoiq data build`)",
    "--p_epochs": "--p_epochs: unused by the original; dropped",
}


@dataclass
class Translation:
    """The config a legacy command means, and what the user should know about it."""

    config: StageConfig
    notes: list[str] = field(default_factory=list)


def _tokens(argv: Sequence[str] | str) -> list[str]:
    if isinstance(argv, str):
        # Pasted multi-line commands: drop line continuations, including the README's "\ " ones.
        argv = shlex.split(re.sub(r"\\[ \t]*(\n|$)", " ", argv))
    tokens = [t for t in argv if t.strip() and t != "\\"]
    if tokens and tokens[0].startswith("python"):
        tokens = tokens[1:]
    return tokens


def _is_flag(token: str) -> bool:
    if not token.startswith("-"):
        return False
    try:
        float(token)
    except ValueError:
        return True
    return False


def parse_legacy_args(argv: Sequence[str] | str) -> tuple[str | None, dict[str, Any]]:
    """Split a legacy command into its script name (if given) and ``{canonical flag: value}``."""
    tokens = _tokens(argv)
    script = None
    if tokens and tokens[0].endswith(".py"):
        script = tokens.pop(0).rsplit("/", 1)[-1]
        if script not in _SCRIPTS:
            raise LegacyFlagError(f"unknown script {script!r}; expected one of {', '.join(_SCRIPTS)}")
    opts: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not _is_flag(token):
            raise LegacyFlagError(f"unexpected argument {token!r} (not a flag or a flag's value)")
        name, _, inline = token.partition("=")
        name = _ALIASES.get(name, name)
        values = [inline] if inline else []
        i += 1
        while i < len(tokens) and not _is_flag(tokens[i]):
            values.append(tokens[i])
            i += 1
        if name in _BOOL:
            if values:
                raise LegacyFlagError(f"{name} takes no value, got {values}")
            opts[name] = True
        elif name in _ONE:
            if len(values) != 1:
                raise LegacyFlagError(f"{name} takes one value, got {values or 'none'}")
            opts[name] = values[0]
        elif name in _MANY:
            if not values and name != "--skip_list":
                raise LegacyFlagError(f"{name} takes one or more values, got none")
            opts[name] = values
        else:
            raise LegacyFlagError(
                f"unknown flag {name!r}: not one of the original VideoIQ flags videoiq translates "
                f"(the ones its README commands and section 2 of the spec use)"
            )
    return script, opts


def _stage_of(script: str | None, opts: dict[str, Any]) -> str:
    backbone = opts.get("--backbone_net")
    if backbone is None:
        raise LegacyFlagError("--backbone_net is required (the original's default 's3d' is not a VideoIQ model)")
    if backbone not in _BACKBONES:
        raise LegacyFlagError(f"--backbone_net {backbone!r}: expected one of {', '.join(_BACKBONES)}")
    stage = _BACKBONES[backbone]
    if (script is not None and _SCRIPTS[script] not in (None, stage)
            and not (stage == "policy" and script == "test_ada.py")):
        raise LegacyFlagError(f"{script} does not train --backbone_net {backbone}")
    if opts.get("--evaluate") or script == "test_ada.py":
        if stage != "policy":
            raise LegacyFlagError("-e/--evaluate: videoiq evaluates policy-stage (resnet_videoiq) checkpoints")
        return "eval"
    return stage


def _ints(values: Sequence[str], flag: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise LegacyFlagError(f"{flag}: expected integers, got {list(values)}") from None


def _num(value: str, flag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise LegacyFlagError(f"{flag}: expected a number, got {value!r}") from None


def _per_bit(values: Sequence[str], bits: Sequence[int], flag: str) -> dict[int, float]:
    if len(values) == 1:
        values = list(values) * len(bits)
    if len(values) != len(bits):
        raise LegacyFlagError(f"{flag}: needs one value per bit width {list(bits)}, got {list(values)}")
    return {b: _num(v, flag) for b, v in zip(bits, values, strict=True)}


def translate_legacy(argv: Sequence[str] | str) -> Translation:
    """Translate an original VideoIQ command line (with or without ``python <script>.py``)."""
    script, given = parse_legacy_args(argv)
    stage = _stage_of(script, given)
    opt = {**ORIGINAL_DEFAULTS, **given}
    notes = [_NOTES[k] for k in given if k in _NOTES]
    if "--dataset" not in given:
        raise LegacyFlagError("--dataset is required (the original's default 'st2stv2' is not a VideoIQ dataset)")
    if not given.get("--use_lmdb"):
        notes.append("frame folders: videoiq trains from LMDB; convert them first with `videoiq data build`")
    if opt["--lr_scheduler"] != "cosine":
        raise LegacyFlagError(f"--lr_scheduler {opt['--lr_scheduler']!r}: "
                              "videoiq implements the seeds' cosine schedule only")
    data = {
        "dataset": opt["--dataset"],
        "num_frames": int(opt["--groups"]),
        "frames_per_segment": int(opt["--frames_per_group"]),
        "input_size": int(opt["--input_size"]),
        "scale_up": not given.get("--disable_scaleup", False),
        "batch_size": int(opt["--batch-size"]),
    }
    if "--datadir" in given:
        data["root"] = given["--datadir"]
    cfg: dict[str, Any] = {"stage": stage, "data": data}
    run: dict[str, Any] = {}
    if "--logdir" in given:
        run["storage_path"] = given["--logdir"]
    if "--prefix" in given:
        run["name"] = given["--prefix"]
    if run:
        cfg["run"] = run
    optim = {
        "epochs": int(opt["--epochs"]),
        "lr": _num(opt["--lr"], "--lr"),
        "momentum": _num(opt["--momentum"], "--momentum"),
        "weight_decay": _num(opt["--weight-decay"], "--weight-decay"),
        "nesterov": bool(given.get("--nesterov")),
    }
    depth = int(opt["--depth"])
    translate = {"fp": _fp, "policy_pretrain": _policy_pretrain, "ap": _ap, "policy": _policy, "eval": _eval}[stage]
    translate(cfg, optim, opt, given, depth, notes)
    return Translation(config_from_dict(cfg, "legacy command"), notes)


def _imagenet_note(given: dict[str, Any], what: str, notes: list[str]) -> None:
    if not given.get("--no_imagenet_pretrained"):
        notes.append(
            f"ImageNet init: the original downloaded torchvision's ImageNet {what}; videoiq downloads "
            f"nothing, so set init.imagenet_weights to a local torchvision weight file to do the same"
        )


def _loss_kind(opt: dict[str, Any]) -> str:
    kind = str(opt["--loss_type"]).lower()
    if kind not in ("ce", "kd", "kd_ce"):
        raise LegacyFlagError(f"--loss_type {opt['--loss_type']!r}: expected CE, KD or KD_CE")
    return kind


def _fp(cfg, optim, opt, given, depth, notes) -> None:
    cfg.update(model={"name": f"resnet{depth}", "dropout": _num(opt["--dropout"], "--dropout")}, optim=optim)
    _imagenet_note(given, f"ResNet-{depth}", notes)


def _policy_pretrain(cfg, optim, opt, given, depth, notes) -> None:
    cfg.update(model={"name": "mobilenet_v2", "dropout": _num(opt["--dropout"], "--dropout")}, optim=optim)
    _imagenet_note(given, "MobileNetV2", notes)


def _ap(cfg, optim, opt, given, depth, notes) -> None:
    w_bits = _ints(opt["--w_bit_width_family"], "--w_bit_width_family")
    a_bits = _ints(opt["--a_bit_width_family"], "--a_bit_width_family")
    if w_bits != a_bits:
        raise LegacyFlagError(
            f"--w_bit_width_family {w_bits} differs from --a_bit_width_family {a_bits}; videoiq ties weight and "
            f"activation widths (every VideoIQ command sets them equal)"
        )
    inits = {_num(v, "--q_init") for v in opt["--q_init"]}
    if len(inits) != 1:
        raise LegacyFlagError(f"--q_init: videoiq starts every clip at one value, got {opt['--q_init']}")
    cfg["model"] = {"name": f"ap_resnet{depth}", "dropout": _num(opt["--dropout"], "--dropout")}
    cfg["quant"] = {
        "bit_widths": w_bits,
        "switchable_bn": bool(given.get("--switch_bn")),
        "switchable_clip": bool(given.get("--switch_clipval")),
        "clip_init": inits.pop(),
        "mean_aligned": bool(given.get("--mean_aligned")),
    }
    optim["clip_lr"] = _per_bit(opt["--q_lr"], a_bits, "--q_lr")
    optim["clip_weight_decay"] = _per_bit(opt["--q_weight-decay"], a_bits, "--q_weight-decay")
    cfg["optim"] = optim
    cfg["loss"] = {
        "kind": _loss_kind(opt),
        "teacher": bool(given.get("--is_32fp")),
        "kd_weight": _num(opt["--kd_weight"], "--kd_weight"),
    }
    if "--imagenet_path" in given:
        cfg["init"] = {"backbone_checkpoint": given["--imagenet_path"]}
    else:
        _imagenet_note(given, f"ResNet-{depth} (teacher and initial weights)", notes)


_FROM_CHECKPOINT = ("--q_init", "--q_lr", "--q_weight-decay", "--switch_bn", "--switch_clipval", "--depth", "--dropout")


def _policy_fields(cfg, opt, given) -> None:
    if int(opt["--p_bit"]) != 32:
        raise LegacyFlagError("--p_bit: only a full-precision policy (32) works in the original, and in videoiq")
    cfg["policy"] = {
        "precisions": _ints(opt["--bit_width_family"], "--bit_width_family"),
        "fp_action": bool(given.get("--use_fp_as_bb")),
        "skip_choices": _ints(opt["--skip_list"], "--skip_list"),
        "aux_classifier": bool(given.get("--is_policy_pred")),
        "temperature_decay": _num(opt["--temperature_decay_rate"], "--temperature_decay_rate"),
    }


def _policy(cfg, optim, opt, given, depth, notes) -> None:
    _policy_fields(cfg, opt, given)
    optim.pop("lr")
    optim.update(policy_lr=_num(opt["--p_lr"], "--p_lr"), policy_backbone_lr=_num(opt["--p_b_lr"], "--p_b_lr"))
    cfg["optim"] = optim
    weight = {flag: _num(opt[f"{flag}_w"], f"{flag}_w") if given.get(flag) else 0.0
              for flag in ("--efficient", "--balanced", "--entropy")}
    cfg["loss"] = {
        "kind": _loss_kind(opt),
        "teacher": bool(given.get("--is_32fp") or given.get("--use_fp_as_bb")),
        "efficiency_weight": weight["--efficient"],
        "balance_weight": weight["--balanced"],
        "entropy_weight": weight["--entropy"],
        "policy_ce_weight": _num(opt["--policy_w"], "--policy_w") if given.get("--is_policy_pred") else 0.0,
    }
    init = {}
    if "--resnet_imagenet_path" in given:
        init["backbone_checkpoint"] = given["--resnet_imagenet_path"]
        notes.append(
            "--resnet_imagenet_path -> init.backbone_checkpoint: it must be the *ap* stage's checkpoint "
            "(the original README calls it the fp network, which silently left the teacher random)"
        )
    if "--mobilenet_imagenet_path" in given:
        init["policy_backbone_checkpoint"] = given["--mobilenet_imagenet_path"]
    if init:
        cfg["init"] = init
    if "--lr" in given:
        notes.append("--lr: unused in the policy stage (the backbone is frozen); policy_lr/policy_backbone_lr apply")
    ignored = [f for f in _FROM_CHECKPOINT if f in given]
    if ignored:
        notes.append(f"{', '.join(ignored)}: the backbone's architecture, clips and BNs come from the ap checkpoint")
    notes.append(
        f"--bit_width_family {cfg['policy']['precisions']} -> policy.precisions: lower widths are truncated from "
        f"the master width stored in the ap checkpoint (the original truncated from the max of this list, "
        f"which differs from the ap training when the list does not start with the ap master width)"
    )


def _eval(cfg, optim, opt, given, depth, notes) -> None:
    if "--pretrained" not in given:
        raise LegacyFlagError("-e/--evaluate needs --pretrained <checkpoint>")
    deterministic = bool(given.get("--deterministic"))
    cfg["eval"] = {
        "checkpoint": given["--pretrained"],
        "decisions": "argmax",
        "num_clips": int(opt["--num_clips"]),
        "num_crops": int(opt["--num_crops"]),
    }
    if not deterministic:
        notes.append(
            "decisions: the original sampled Gumbel decisions at test time (no --deterministic); videoiq "
            "evaluates with argmax decisions; set eval.decisions=sampled to reproduce the original"
        )
    training_flags = sorted(
        f for f in given
        if f not in ("--dataset", "--datadir", "--pretrained", "--evaluate", "--groups", "--frames_per_group",
                     "--input_size", "--disable_scaleup", "--batch-size", "--num_clips", "--num_crops",
                     "--deterministic", "--backbone_net", "--logdir", "--prefix") and f not in _NOTES
    )
    if training_flags:
        notes.append("ignored at evaluation (the model and its settings come from the checkpoint): "
                     + ", ".join(training_flags))
