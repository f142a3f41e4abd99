"""The VideoIQ model: a policy picks, per frame, the precision the any-precision ResNet runs at.

This is the dense reference forward of the original ``ada_forward``: every precision
action is computed on every frame, and the straight-through one-hot decisions select and mix the
per-frame features::

    feat_t = sum_k r[t, k] * F_k[t] * T / n        n = number of non-skipped frames (>= 1)
    logits = mean_t fc(dropout(feat_t))             the backbone's shared fc

which equals the fc applied to the mean feature of the non-skipped frames. Training needs this dense
form (the mixture is what carries gradients to the policy). :meth:`VideoIQ.infer` is the conditional
execution that inference can afford: the policy decides, then the backbone runs once per chosen
precision on just the frames routed to it (gathered across the batch), never on skipped frames, and
the fc is applied to the mean feature of the frames that ran. It gives the dense forward's logits.

Actions are ordered ``[fp teacher (if fp_action)] + precisions + skip choices``. ``precisions`` is
a subset of the backbone's trained family, in its order; lower widths are always truncated from the
backbone's own master width, so the policy can never see weight grids the backbone was not trained
on (the original's README command did).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quant import bit_width, bit_widths_of, shared_weight_normalization
from .int8 import Int8ResNet, check_engine
from .policy import LOG_PROB_FLOOR, PolicyNet
from .resnet import ResNet, fold_frames

FP_ACTION = "fp"


def action_names(precisions: Sequence[int], skip_choices: Sequence[int], fp_action: bool) -> tuple[str, ...]:
    """Names of the policy's actions in head order, e.g. ``("fp", "4bit", "2bit", "skip1")``."""
    return tuple(([FP_ACTION] if fp_action else []) + [f"{b}bit" for b in precisions]
                 + [f"skip{s}" for s in skip_choices])


class VideoIQOutput(NamedTuple):
    """Everything one VideoIQ forward produces; ``None`` where the part was not built."""

    logits: Tensor  # (B, C) video logits from the chosen precisions
    decisions: Tensor  # (B, T, A) one-hot actions
    log_probs: Tensor  # (B, T, A) policy log-probabilities
    reference_logits: Tensor  # (B, C) all frames at the first action, no grad (KD target without teacher)
    teacher_logits: Tensor | None  # (B, C) frozen full-precision teacher on all frames
    policy_logits: Tensor | None  # (B, C) auxiliary policy classifier
    kept_target_logits: Tensor  # (B, C) the teacher (else the first action) on only the frames kept, no grad


class VideoIQ(nn.Module):
    """Policy + any-precision backbone (+ optional frozen full-precision teacher).

    Args:
        backbone: an any-precision :class:`ResNet`.
        policy: a :class:`PolicyNet` whose head has one output per action.
        precisions: the backbone widths the policy may choose; default: the whole family.
        skip_choices: skip lengths offered to the policy (must match the policy's).
        teacher: frozen full-precision ResNet; its logits are the KD target and, with
            ``fp_action``, its features are an extra action at index 0.
        fp_action: offer the teacher as an action (the original's ``--use_fp_as_bb``).
    """

    def __init__(
        self,
        backbone: ResNet,
        policy: PolicyNet,
        *,
        precisions: Sequence[int] | None = None,
        teacher: ResNet | None = None,
        fp_action: bool = False,
    ) -> None:
        super().__init__()
        family = bit_widths_of(backbone)
        if family is None:
            raise ValueError("VideoIQ needs an any-precision backbone (an ap_* model); got a full-precision one")
        chosen = tuple(family if precisions is None else precisions)
        outside = [b for b in chosen if b not in family]
        if outside or not chosen:
            raise ValueError(
                f"policy precisions {list(chosen)} must be a non-empty subset of the backbone's "
                f"bit widths {list(family)}"
            )
        if list(chosen) != [b for b in family if b in chosen]:
            raise ValueError(f"policy precisions {list(chosen)} must keep the backbone's order {list(family)}")
        if fp_action and teacher is None:
            raise ValueError("fp_action needs a full-precision teacher")
        if teacher is not None and bit_widths_of(teacher) is not None:
            raise ValueError("the teacher must be a full-precision model")
        num_precisions = len(chosen) + int(fp_action)
        if policy.num_precisions != num_precisions:
            raise ValueError(
                f"the policy has {policy.num_precisions} precision actions, the model needs {num_precisions} "
                f"({'fp + ' if fp_action else ''}{list(chosen)})"
            )
        self.backbone = backbone
        self.policy = policy
        self.teacher = teacher
        self.precisions = chosen
        self.fp_action = fp_action
        self.actions = action_names(chosen, policy.skip_choices, fp_action)
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    @property
    def bit_widths(self) -> tuple[int, ...]:
        """The backbone's trained precision family (master width first)."""
        family = bit_widths_of(self.backbone)
        assert family is not None
        return family

    def train(self, mode: bool = True) -> VideoIQ:
        """Switch train/eval mode; the frozen teacher always stays in eval mode (BN stats, no dropout)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def precision_features(self, video: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-frame features of every precision action ``(B, T, P, D)`` and the teacher's ``(B, T, D)``."""
        feats = []
        teacher_feats = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_feats = self.teacher.forward_features(video)
            if self.fp_action:
                feats.append(teacher_feats)
        frames, b, t = fold_frames(video, type(self).__name__)
        with shared_weight_normalization(self.backbone):  # the work every precision shares, done once
            stem = self.backbone.stem(frames, passes=len(self.precisions))
            for bits in self.precisions:
                with bit_width(self.backbone, bits):
                    feats.append(self.backbone.stages(stem).view(b, t, -1))
        return torch.stack(feats, dim=2), teacher_feats

    def _forced(self, video: Tensor, forced_actions: Tensor) -> Tensor:
        """One-hot decisions ``(B, T, A)`` from action indices ``(B, T)``, checked against the video."""
        num_actions = len(self.actions)
        if forced_actions.shape != video.shape[:2]:
            raise ValueError(f"forced_actions must have shape (B, T)={tuple(video.shape[:2])}, "
                             f"got {tuple(forced_actions.shape)}")
        if forced_actions.min() < 0 or forced_actions.max() >= num_actions:
            raise ValueError(f"forced_actions must index the {num_actions} actions {self.actions}")
        return F.one_hot(forced_actions.long(), num_actions).to(video.dtype)

    def forward(
        self,
        video: Tensor,
        *,
        deterministic: bool | None = None,
        forced_actions: Tensor | None = None,
    ) -> VideoIQOutput:
        """Run the policy and the backbone on a video batch.

        Args:
            video: ``(B, T, C, H, W)`` normalised frames.
            deterministic: argmax decisions instead of Gumbel samples; ``None``: argmax in eval
                mode, sampled in training.
            forced_actions: ``(B, T)`` action indices that replace the policy's decisions (for
                baselines and tests); the policy is then not run.
        """
        policy_logits = None
        if forced_actions is None:
            decisions, log_probs, policy_logits = self.policy(video, deterministic=deterministic)
        else:
            decisions = self._forced(video, forced_actions)
            log_probs = decisions.clamp_min(LOG_PROB_FLOOR).log()
        feats, teacher_feats = self.precision_features(video)
        num_frames = video.shape[1]
        r = decisions[..., : feats.shape[2]]
        kept = r.sum(dim=(1, 2)).clamp_min(1.0)
        mixed = (r.unsqueeze(-1) * feats).sum(dim=2) * (num_frames / kept).view(-1, 1, 1)
        logits = self.backbone.forward_head(mixed)
        with torch.no_grad():
            reference_logits = self.backbone.fc(feats[:, :, 0]).mean(dim=1)
            teacher_logits = None if teacher_feats is None else self.teacher.forward_head(teacher_feats)
            # what the KD target would be had it seen only the frames this forward keeps: skipping a frame
            # that says nothing then costs no distillation loss (the all-frames target does penalise it)
            keep = (r.detach().sum(dim=-1) * (num_frames / kept.detach()).view(-1, 1)).unsqueeze(-1)
            if teacher_feats is None:
                kept_target_logits = self.backbone.fc(feats[:, :, 0].detach() * keep).mean(dim=1)
            else:
                kept_target_logits = self.teacher.forward_head(teacher_feats * keep)
        return VideoIQOutput(logits, decisions, log_probs, reference_logits, teacher_logits, policy_logits,
                             kept_target_logits)

    def int8_backbone(self) -> Int8ResNet:
        """The backbone on integer kernels (:class:`~videoiq.models.int8.Int8ResNet`), built on first use and
        rebuilt only when the backbone's weights or statistics change."""
        state = tuple((t._version, t.data_ptr()) for t in self.backbone.state_dict().values())
        cached = self.__dict__.get("_int8")
        if cached is None or cached[0] != state:
            self.__dict__["_int8"] = cached = (state, Int8ResNet(self.backbone))
        return cached[1]

    def __getstate__(self) -> dict:
        # copies and pickles start without the packed integer weights (rebuilt on first use)
        return {k: v for k, v in self.__dict__.items() if k != "_int8"}

    @torch.no_grad()
    def infer(self, video: Tensor, *, deterministic: bool = True,
              forced_actions: Tensor | None = None, engine: str = "float") -> tuple[Tensor, Tensor]:
        """Conditional execution for inference: ``(logits (B, C), decisions (B, T, A))``.

        Runs the policy (unless ``forced_actions``), then each precision action's network (the
        backbone at that width, or the frozen teacher for the fp action) once, on only the frames
        routed to it from every video of the batch; skipped frames run nothing. Equal to
        :meth:`forward` in eval mode up to float rounding. Call it in eval mode (dropout off).

        ``engine="int8"`` runs the backbone's widths on integer kernels (:mod:`videoiq.models.int8`, CPU):
        the same results up to float rounding, at a cost that falls with the width.
        """
        check_engine(engine, video.device)
        backbone = self.int8_backbone() if engine == "int8" else None
        if forced_actions is None:
            decisions = self.policy(video, deterministic=deterministic).decisions
        else:
            decisions = self._forced(video, forced_actions)
        b, t = video.shape[:2]
        action = decisions.argmax(dim=-1).flatten()  # (B*T,) one action per frame
        frames = video.flatten(0, 1)
        total = video.new_zeros(b, self.backbone.num_features)
        runs = self.policy.num_precisions  # actions below this index run a network; the rest skip
        for k in range(runs):
            routed = (action == k).nonzero().squeeze(1)
            if routed.numel() == 0:
                continue
            chosen = frames.index_select(0, routed)
            if self.fp_action and k == 0:
                features = self.teacher.frame_features(chosen)
            else:
                bits = self.precisions[k - int(self.fp_action)]
                if backbone is not None:
                    features = backbone.frame_features(chosen, bits)
                else:
                    with bit_width(self.backbone, bits):
                        features = self.backbone.frame_features(chosen)
            total.index_add_(0, torch.div(routed, t, rounding_mode="floor"), features)
        kept = (action < runs).view(b, t).sum(dim=1)
        return self.backbone.fc(total / kept.clamp_min(1).unsqueeze(1)), decisions
