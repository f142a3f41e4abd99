"""Compute cost: MACs counted from the model graph, the bit-cost table, and GFLOPs per video.

Convention (as the paper and torchvision's ``_ops`` metadata): "GFLOPs" means giga
multiply-accumulates (GMACs). ``torch.utils.flop_counter`` counts 2 FLOPs per MAC, so counts are
halved. Counting runs on the ``meta`` device: no memory for activations, no arithmetic.

Cost of a video under a policy, for action usage fractions ``u_a`` over frames::

    E        = sum_a u_a * cost(a)          cost(b bits) = (min(b, 8) / 8) ** 2, fp = 1, skip = 0
    backbone = fp_part + quantized_part * E
    policy   = policy_cnn * cost(policy_bits) + policy_rnn

``fp_part`` is the stem conv and the fc, which stay full precision. The original charges them for
every frame, skipped ones included (``charge_skipped=True``, the paper-compatible default); a
deployment that really skips frames pays them only for the frames it runs (``charge_skipped=False``).

The original typed these parts in as constants for 16 frames at 224x224 (:data:`PAPER_COSTS`):
ResNet-50 65.76 of which 1.92 full precision, ResNet-18 29.1, MobileNetV2 policy 0.779 and LSTM
0.119. The graph count gives 65.43 / 1.92 / 0.806 / 0.059 (the original's LSTM figure is in FLOPs,
not MACs). :func:`video_cost` counts any model, frame count and resolution.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import action_names, create_model

FP_BIT_COST_CAP = 8
"""Widths above 8 bits cost as much as 8 bits (the original's ``min(bits, 8)``)."""

SKIP_COST = 0.0
"""A skipped frame runs no quantized layer."""

FULL_PRECISION_MODULES = ("conv1", "fc")
"""The ResNet children that are never quantized; their MACs are not scaled by bit cost."""

POLICY_CNN_MODULES = ("features",)
"""The PolicyNet children whose cost scales with the policy's own precision (only 32 is supported)."""


def bit_cost(bits: int) -> float:
    """Relative cost of a layer at ``bits`` vs full precision: ``(min(bits, 8) / 8) ** 2`` (BitOps)."""
    if bits < 1:
        raise ValueError(f"bit width must be >= 1, got {bits}")
    return (min(bits, FP_BIT_COST_CAP) / FP_BIT_COST_CAP) ** 2


def is_skip(action: str) -> bool:
    """Whether a policy action name (``"skip<s>"``) skips the frame."""
    return action.startswith("skip") and action[4:].isdigit()


def action_cost(action: str) -> float:
    """Cost of a policy action by name: ``"fp"`` (the teacher) = 1, ``"<b>bit"`` = bit_cost(b), ``"skip<s>"`` = 0."""
    if action == "fp":
        return bit_cost(32)
    if is_skip(action):
        return SKIP_COST
    if action.endswith("bit") and action[:-3].isdigit():
        return bit_cost(int(action[:-3]))
    raise ValueError(f"unknown policy action {action!r}; expected 'fp', '<bits>bit' or 'skip<n>'")


def action_usage(decisions: torch.Tensor, actions: Sequence[str]) -> dict[str, float]:
    """Fraction of frames at each action from one-hot decisions ``(..., A)`` (any leading dims).

    The histogram that :meth:`VideoCost.gmacs` prices; it sums to 1 over ``actions``.
    """
    if decisions.shape[-1] != len(actions):
        raise ValueError(f"decisions have {decisions.shape[-1]} actions, expected {len(actions)} ({list(actions)})")
    counts = decisions.detach().reshape(-1, len(actions)).sum(dim=0)
    total = counts.sum()
    if total <= 0:
        raise ValueError("no decisions to count")
    return dict(zip(actions, (counts / total).tolist(), strict=True))


@dataclass(frozen=True)
class MacReport:
    """MACs of one forward: the total and the share of each top-level child module."""

    total: int
    by_module: dict[str, int]

    def part(self, names: Sequence[str]) -> int:
        """MACs of the named top-level children together."""
        return sum(self.by_module.get(n, 0) for n in names)


def count_macs(model: nn.Module, *inputs_shape: Sequence[int], **forward_kwargs) -> MacReport:
    """Count the MACs of ``model(*inputs)`` on the meta device (the model itself is not touched).

    Args:
        model: any module; a copy is moved to ``meta`` and run in eval mode.
        inputs_shape: the shape of each positional input, e.g. ``(1, 16, 3, 224, 224)``.
    """
    meta = copy.deepcopy(model).to("meta").eval()
    inputs = [torch.empty(*s, device="meta") for s in inputs_shape]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(*inputs, **forward_kwargs)
    root = type(meta).__name__
    by_module = {}
    for name, ops in counter.get_flop_counts().items():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] == root:
            by_module[parts[1]] = sum(ops.values()) // 2
    return MacReport(total=counter.get_total_flops() // 2, by_module=by_module)


@dataclass(frozen=True)
class VideoGMacs:
    """GMACs of one video under an action usage, split by part."""

    backbone: float
    policy: float
    efficiency: float  # E, the mean action cost over frames

    @property
    def total(self) -> float:
        return self.backbone + self.policy


@dataclass(frozen=True)
class VideoCost:
    """The MACs of each part of a VideoIQ model for one video of ``num_frames`` frames."""

    num_frames: int
    fp_macs: float  # backbone layers kept full precision (stem conv, fc), all frames
    quantized_macs: float  # backbone residual stages at full precision, all frames
    policy_cnn_macs: float  # policy MobileNetV2, all frames
    policy_rnn_macs: float  # policy LSTM and heads, all frames

    def gmacs(
        self,
        usage: Mapping[str, float],
        *,
        policy_bits: int = 32,
        charge_skipped: bool = True,
        with_policy: bool = True,
    ) -> VideoGMacs:
        """GMACs per video for ``usage`` = {action name: fraction of frames}; fractions must sum to 1."""
        total_share = sum(usage.values())
        if usage and abs(total_share - 1.0) > 1e-6:
            raise ValueError(f"action usage fractions must sum to 1, got {total_share:.6f} ({dict(usage)})")
        if any(f < 0 for f in usage.values()):
            raise ValueError(f"action usage fractions must be >= 0, got {dict(usage)}")
        efficiency = sum(f * action_cost(a) for a, f in usage.items())
        run_share = sum(f for a, f in usage.items() if not is_skip(a))
        fp = self.fp_macs * (1.0 if charge_skipped else run_share)
        backbone = fp + self.quantized_macs * efficiency
        policy = self.policy_cnn_macs * bit_cost(policy_bits) + self.policy_rnn_macs if with_policy else 0.0
        return VideoGMacs(backbone=backbone / 1e9, policy=policy / 1e9, efficiency=efficiency)


PAPER_COSTS: dict[str, VideoCost] = {
    "resnet50": VideoCost(16, fp_macs=1.92e9, quantized_macs=(65.76 - 1.92) * 1e9, policy_cnn_macs=0.779e9,
                          policy_rnn_macs=0.119e9),
    "resnet18": VideoCost(16, fp_macs=1.92e9, quantized_macs=(29.1 - 1.92) * 1e9, policy_cnn_macs=0.779e9,
                          policy_rnn_macs=0.119e9),
}
"""The original's hard-coded per-video constants (16 frames, 224x224), for paper-comparable numbers."""


def video_cost(
    backbone: nn.Module,
    policy: nn.Module | None = None,
    *,
    num_frames: int,
    input_size: int,
) -> VideoCost:
    """Count a backbone (and policy) for one video of ``num_frames`` frames at ``input_size``.

    The backbone must expose the torchvision ResNet children (``conv1``, ``fc``, stages); the policy
    is a :class:`~videoiq.models.PolicyNet`, fed the same frames it resizes internally.
    """
    shape = (1, num_frames, 3, input_size, input_size)
    bb = count_macs(backbone, shape)
    fp = bb.part(FULL_PRECISION_MODULES)
    if policy is None:
        cnn = rnn = 0
    else:
        pol = count_macs(policy, shape, deterministic=True)
        cnn = pol.part(POLICY_CNN_MODULES)
        rnn = pol.total - cnn
    return VideoCost(num_frames, fp_macs=fp, quantized_macs=bb.total - fp, policy_cnn_macs=cnn, policy_rnn_macs=rnn)


def _gmacs(value: float) -> str:
    """Two decimals for paper-sized models, four significant digits for tiny ones."""
    return f"{value:.2f}" if value >= 0.1 else f"{value:.4g}"


def cost_report(backbone_name: str, policy_name: str, *, frames: int, size: int, classes: int,
                precisions: tuple[int, ...], skips: tuple[int, ...], fp_action: bool = False, policy_size: int = 0,
                policy_hidden: int = 0) -> str:
    """``videoiq flops``: a backbone's and a policy's GMACs per video, counted from the models built by name,
    and the cost of a video with every frame at each action (with the paper's formula beside it at 16x224)."""
    backbone = create_model(backbone_name, num_classes=classes)
    actions = action_names(precisions, list(skips), fp_action)
    sizes = {k: v for k, v in (("input_size", policy_size), ("hidden_size", policy_hidden)) if v}
    policy = create_model(policy_name, num_precisions=len(precisions) + int(fp_action), skip_choices=list(skips),
                          **sizes)
    cost = video_cost(backbone, policy, num_frames=frames, input_size=size)
    full = cost.fp_macs + cost.quantized_macs
    policy_macs = cost.policy_cnn_macs + cost.policy_rnn_macs
    lines = [f"backbone {backbone_name} at {size}x{size}: {full / frames / 1e9:.4f} GMACs per frame at full precision",
             f"  full-precision layers (stem conv, fc): {cost.fp_macs / 1e9:.4f} GMACs per {frames}-frame video, "
             f"{100 * cost.fp_macs / full:.1f}% of a 32-bit pass",
             f"policy {policy_name} at {policy.input_size}x{policy.input_size}: {cost.policy_cnn_macs / 1e9:.4f} (CNN) "
             f"+ {cost.policy_rnn_macs / 1e9:.4f} (LSTM, heads) GMACs per video, {100 * policy_macs / full:.1f}% of a "
             "32-bit pass"]
    paper = PAPER_COSTS.get(backbone_name.removeprefix("ap_")) if (frames, size) == (16, 224) else None
    header = f"{'every frame at':16s} {'GMACs/video':>12s} {'(frames run)':>13s}"
    lines += ["", header + (f" {'paper formula':>14s}" if paper else "")]
    for action in actions:
        usage = {action: 1.0}
        run = cost.gmacs(usage, charge_skipped=False).total
        row = f"{action:16s} {_gmacs(cost.gmacs(usage).total):>12s} {_gmacs(run):>13s}"
        if paper:
            row += f" {_gmacs(paper.gmacs(usage).total):>14s}"
        lines.append(row)
    lines += ["", "GMACs/video charges the full-precision stem and fc for skipped frames (the paper's convention); "
              "'frames run' charges them only for frames that run."]
    return "\n".join(lines)
