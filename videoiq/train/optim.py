"""Optimizer parameter groups per stage, SGD, and the per-epoch learning-rate schedule.

* ``fp`` / ``policy_pretrain``: one group, ``optim.lr`` and ``optim.weight_decay``.
* ``ap``: the weights shared by every width train at ``lr / number of widths`` (their gradient is a
  sum over widths); each width's own BN parameters at ``lr``; each width's PACT clips at
  ``optim.clip_lr[bits]`` with ``optim.clip_weight_decay[bits]`` (2-bit: 0.01 and 0.06). The original
  grouped by name substring and so gave the stem BN full LR and the downsample BNs LR/3; here the split
  follows what each parameter is.
* ``policy``: the policy's MobileNetV2 at ``policy_backbone_lr``, its LSTM and heads at ``policy_lr``;
  the backbone is frozen.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..quant import SwitchableBatchNorm2d, bit_widths_of, clip_parameters


def _trainable(params: Any) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]


def single_group(model: nn.Module, optim: Any) -> list[dict[str, Any]]:
    return [{"name": "weights", "params": _trainable(model.parameters()), "lr": optim.lr,
             "weight_decay": optim.weight_decay}]


def any_precision_groups(model: nn.Module, optim: Any) -> list[dict[str, Any]]:
    family = bit_widths_of(model)
    if family is None:
        raise ValueError("any_precision_groups needs an any-precision model")
    clips = clip_parameters(model)
    per_bit_bn = [p for m in model.modules() if isinstance(m, SwitchableBatchNorm2d) for p in m.parameters()]
    taken = {id(p) for ps in clips.values() for p in ps} | {id(p) for p in per_bit_bn}
    shared = [p for p in _trainable(model.parameters()) if id(p) not in taken]
    groups = [
        {"name": "shared", "params": shared, "lr": optim.lr / len(family), "weight_decay": optim.weight_decay},
        {"name": "bn/per-bit", "params": per_bit_bn, "lr": optim.lr, "weight_decay": optim.weight_decay},
    ]
    for key, params in sorted(clips.items(), key=lambda kv: -int(kv[0]) if kv[0].isdigit() else 0):
        bits = int(key) if key.isdigit() else family[0]  # a shared clip follows the master width's settings
        groups.append({"name": f"clip/{key}", "params": params, "lr": optim.clip_lr[bits],
                       "weight_decay": optim.clip_weight_decay[bits]})
    return [g for g in groups if g["params"]]


def policy_groups(policy: nn.Module, optim: Any) -> list[dict[str, Any]]:
    backbone = _trainable(policy.features.parameters())
    ids = {id(p) for p in backbone}
    head = [p for p in _trainable(policy.parameters()) if id(p) not in ids]
    return [
        {"name": "policy/backbone", "params": backbone, "lr": optim.policy_backbone_lr,
         "weight_decay": optim.weight_decay},
        {"name": "policy/head", "params": head, "lr": optim.policy_lr, "weight_decay": optim.weight_decay},
    ]


def build_optimizer(groups: list[dict[str, Any]], optim: Any) -> torch.optim.SGD:
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov,
                           weight_decay=optim.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine from each group's lr to 0 over ``optim.epochs`` (stepped once per epoch), or constant."""
    epochs = optim.epochs
    if optim.scheduler == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
