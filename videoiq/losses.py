"""Loss terms of the four stages, as pure functions of tensors.

* :func:`soft_cross_entropy`: KD with temperature 1, ``-mean_b sum_c q_bc log softmax(z_b)_c`` against
  detached teacher probabilities;
* :func:`efficiency_loss`: the expected normalised per-frame cost of the straight-through decisions,
  priced by :func:`videoiq.flops.action_cost` (``min(b, 8)^2 / 64``; skip 0);
* :func:`balance_loss`: squared distance of the action usage from uniform. The target is ``1/A`` over
  *all* A actions; the original used ``1/(precisions + skips)`` and so ignored its fp-teacher action
 , which is the one deliberate difference from the original here;
* :func:`entropy_loss`: the mean per-frame entropy of the policy (minimised to sharpen it).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .flops import action_cost


def soft_cross_entropy(logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Knowledge distillation at temperature 1: cross-entropy against ``softmax(teacher_logits)`` (no gradient)."""
    target = F.softmax(teacher_logits.detach().float(), dim=-1)
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def action_costs(actions: Sequence[str], device: torch.device | str = "cpu") -> Tensor:
    """The cost of each action, in head order, as a tensor for :func:`efficiency_loss`."""
    return torch.tensor([action_cost(a) for a in actions], device=device)


def efficiency_loss(decisions: Tensor, costs: Tensor) -> Tensor:
    """``mean over frames of sum_a r[a] * cost[a]`` for decisions ``(B, T, A)``."""
    return (decisions * costs.to(decisions.dtype)).sum(dim=-1).mean()


def balance_loss(decisions: Tensor) -> Tensor:
    """``sum_a (u_a - 1/A)^2``, u the mean usage of each action over batch and frames."""
    usage = decisions.mean(dim=(0, 1))
    return ((usage - 1.0 / decisions.shape[-1]) ** 2).sum()


def entropy_loss(log_probs: Tensor) -> Tensor:
    """Mean over frames of ``-sum_a p_a log p_a`` from log-probabilities ``(B, T, A)``."""
    return -(log_probs.exp() * log_probs).sum(dim=-1).mean()
