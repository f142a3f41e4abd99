"""The policy network: MobileNetV2 features -> LSTMCell -> per-frame decisions.

Each frame, resized to ``input_size`` (84 in the paper; bilinear, ``align_corners=False``), goes
through the MobileNetV2 features, global pooling and dropout (0.8). An ``LSTMCell`` (1280 -> 512,
zero initial state) reads the frames in order and a linear head scores the actions
``[fp teacher?] + precisions + skips``. Decisions are hard Gumbel-softmax samples over the
log-probabilities (one-hot forward, soft straight-through backward) at the temperature held in the
``temperature`` buffer, or one-hot argmax when deterministic.

Skip bookkeeping, vectorised over the batch: choosing skip option ``s`` skips the current frame and
the next ``s - 1``; while a skip is running, a step copies the previous decision, log-probabilities
and hidden state ``h`` (the cell state ``c`` keeps integrating the skipped frames, as in the
original). The auxiliary classifier averages the LSTM outputs as computed, before a carry replaces
them, as the original does.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model
from .mobilenet_v2 import TSNMobileNetV2, mobilenet_v2, mobilenet_v2_tiny, pool_features
from .resnet import fold_frames

LOG_PROB_FLOOR = 1e-8
"""Probabilities are clamped to this before the log, as in the original policy."""


class PolicyOutput(NamedTuple):
    """What the policy decides for a video batch."""

    decisions: Tensor  # (B, T, A) one-hot; straight-through gradients when sampled in training
    log_probs: Tensor  # (B, T, A) log of the clamped action probabilities
    logits: Tensor | None  # (B, num_classes) auxiliary classifier on the mean hidden state, if built


def hard_gumbel_softmax(log_probs: Tensor, temperature: Tensor) -> Tensor:
    """One-hot samples from ``softmax((log_probs + Gumbel) / temperature)`` with a soft backward."""
    gumbel = -torch.empty_like(log_probs).exponential_().log()
    soft = torch.softmax((log_probs + gumbel) / temperature, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


class PolicyNet(nn.Module):
    """Per-frame precision/skip policy over ``(B, T, C, H, W)`` normalised videos.

    Args:
        backbone: a TSN MobileNetV2; only its ``features`` are kept (``features.*`` keys).
        num_precisions: actions that run the backbone (the fp teacher option included).
        skip_choices: skip lengths, one action each, after the precision actions.
        hidden_size: LSTM width (512 in the paper).
        input_size: side the frames are resized to (84 in the paper).
        dropout: dropout on the pooled features (0.8 in the paper).
        num_classes: build the auxiliary classifier ``fc`` (``--is_policy_pred``) with this width.
        temperature: initial Gumbel temperature (5.0 in the paper).
    """

    def __init__(
        self,
        backbone: TSNMobileNetV2,
        num_precisions: int,
        skip_choices: Sequence[int] = (),
        *,
        hidden_size: int = 512,
        input_size: int = 84,
        dropout: float = 0.8,
        num_classes: int | None = None,
        temperature: float = 5.0,
    ) -> None:
        super().__init__()
        if num_precisions < 1:
            raise ValueError(f"the policy needs at least one precision action, got {num_precisions}")
        if any(int(s) < 1 for s in skip_choices):
            raise ValueError(f"skip choices must be >= 1 frame, got {list(skip_choices)}")
        if not temperature > 0:
            raise ValueError(f"Gumbel temperature must be positive, got {temperature}")
        self.num_precisions = num_precisions
        self.skip_choices = tuple(int(s) for s in skip_choices)
        self.num_actions = num_precisions + len(self.skip_choices)
        self.input_size = input_size
        self.features = backbone.features
        self.dropout = nn.Dropout(dropout)
        self.rnn = nn.LSTMCell(backbone.last_channel, hidden_size)
        self.linear = nn.Linear(hidden_size, self.num_actions)
        self.fc = nn.Linear(hidden_size, num_classes) if num_classes else None
        for head in (self.linear, self.fc):
            if head is not None:
                nn.init.normal_(head.weight, 0.0, 0.001)
                nn.init.zeros_(head.bias)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer(
            "skip_lengths", torch.tensor([0] * num_precisions + list(self.skip_choices)), persistent=False
        )

    def set_temperature(self, value: float) -> None:
        """Set the Gumbel temperature (the trainer derives it from the epoch so resumes are exact)."""
        if not value > 0:
            raise ValueError(f"Gumbel temperature must be positive, got {value}")
        self.temperature.fill_(value)

    def frame_features(self, video: Tensor) -> Tensor:
        """Pooled, dropped-out MobileNetV2 features ``(B, T, last_channel)`` at the policy resolution."""
        x, b, t = fold_frames(video, type(self).__name__)
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.dropout(pool_features(self.features(x))).view(b, t, -1)

    def forward(self, video: Tensor, *, deterministic: bool | None = None) -> PolicyOutput:
        """Decide an action per frame.

        Args:
            video: ``(B, T, C, H, W)`` normalised frames at the recognition resolution.
            deterministic: one-hot argmax instead of Gumbel sampling; ``None`` means argmax in
                eval mode and sampling in training.
        """
        if deterministic is None:
            deterministic = not self.training
        feats = self.frame_features(video)
        b, t, _ = feats.shape
        h = feats.new_zeros(b, self.rnn.hidden_size)
        c = feats.new_zeros(b, self.rnn.hidden_size)
        remaining = torch.zeros(b, dtype=torch.long, device=feats.device)
        decisions, log_probs, hiddens = [], [], []
        for i in range(t):
            h_new, c = self.rnn(feats[:, i], (h, c))
            logp = torch.log(torch.softmax(self.linear(h_new), dim=-1).clamp_min(LOG_PROB_FLOOR))
            if deterministic:
                r = F.one_hot(logp.argmax(dim=-1), self.num_actions).to(logp.dtype)
            else:
                r = hard_gumbel_softmax(logp, self.temperature)
            hiddens.append(h_new)  # the auxiliary classifier reads the LSTM output before any skip carry
            if self.skip_choices:
                if i > 0:
                    carry = (remaining > 0).unsqueeze(1)
                    h_new = torch.where(carry, h, h_new)
                    logp = torch.where(carry, log_probs[-1], logp)
                    r = torch.where(carry, decisions[-1], r)
                chosen_skip = self.skip_lengths[r.argmax(dim=-1)]
                remaining = torch.where(remaining == 0, chosen_skip, remaining)
                remaining = (remaining - 1).clamp_min(0)
            h = h_new
            decisions.append(r)
            log_probs.append(logp)
        logits = self.fc(torch.stack(hiddens, dim=1).mean(dim=1)) if self.fc is not None else None
        return PolicyOutput(torch.stack(decisions, dim=1), torch.stack(log_probs, dim=1), logits)


def _policy(make_backbone: Callable[[], nn.Module], num_precisions: int, skip_choices: Sequence[int], hidden_size: int,
            input_size: int, dropout: float, num_classes: int | None, temperature: float) -> PolicyNet:
    return PolicyNet(make_backbone(), num_precisions, skip_choices, hidden_size=hidden_size, input_size=input_size,
                     dropout=dropout, num_classes=num_classes, temperature=temperature)


@register_model("policy")
def policy_mobilenet_v2(num_precisions: int, skip_choices: Sequence[int] = (), hidden_size: int = 512,
                        input_size: int = 84, dropout: float = 0.8, num_classes: int | None = None,
                        temperature: float = 5.0) -> PolicyNet:
    """The paper's policy: MobileNetV2 (width 1.0) at 84x84, LSTMCell 1280 -> 512."""
    return _policy(mobilenet_v2, num_precisions, skip_choices, hidden_size, input_size, dropout, num_classes,
                   temperature)


@register_model("policy")
def policy_mobilenet_v2_tiny(num_precisions: int, skip_choices: Sequence[int] = (), hidden_size: int = 32,
                             input_size: int = 32, dropout: float = 0.8, num_classes: int | None = None,
                             temperature: float = 5.0) -> PolicyNet:
    """A tiny policy for tests and CPU smoke runs: MobileNetV2-tiny features at 32x32, 32-wide LSTM."""
    return _policy(mobilenet_v2_tiny, num_precisions, skip_choices, hidden_size, input_size, dropout, num_classes,
                   temperature)
