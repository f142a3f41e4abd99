"""TSN MobileNetV2 on torchvision's definition: the policy backbone and its stage-3 pre-training model.

The original had two MobileNetV2 definitions with different key names, so the stage-3 checkpoint
did not load into the policy (VideoIQ GitHub issue #4). Here there is one: the
TSN model subclasses torchvision's ``MobileNetV2`` (keys ``features.*``, ``classifier.1.*``, so
torchvision ImageNet weight files load unchanged) and the policy network reuses its ``features``.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.ops.misc import Conv2dNormActivation

from ._registry import register_model
from .resnet import fold_frames

# (expand ratio t, channels c, repeats n, stride s) rows; the tiny table keeps 3 of torchvision's 7.
_TINY_SETTING = [[1, 16, 1, 1], [6, 24, 1, 2], [6, 32, 1, 2]]


class TSNMobileNetV2(MobileNetV2):
    """torchvision MobileNetV2 over ``(B, T, C, H, W)`` videos, logits averaged over frames.

    ``last_channel`` replaces torchvision's fixed 1280-channel last 1x1 conv (and the classifier), for
    small models whose feature width should shrink with the rest (the policy's LSTM reads it).
    """

    def __init__(self, *args, last_channel: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if last_channel is not None:
            previous = self.features[-1][0].in_channels
            self.features[-1] = Conv2dNormActivation(previous, last_channel, kernel_size=1,
                                                     norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6)
            self.classifier[1] = nn.Linear(last_channel, self.classifier[1].out_features)
            self.last_channel = last_channel
            for m in (self.features[-1][0], self.classifier[1]):  # torchvision's initialisation
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                else:
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

    @property
    def num_features(self) -> int:
        return self.last_channel

    def forward_features(self, video: Tensor) -> Tensor:
        """Per-frame pooled features ``(B, T, last_channel)``."""
        x, b, t = fold_frames(video, type(self).__name__)
        return pool_features(self.features(x)).view(b, t, -1)

    def frame_logits(self, features: Tensor) -> Tensor:
        """Each frame's own logits ``(B, T, num_classes)``: the classifier per frame."""
        return self.classifier(features)

    def forward_head(self, features: Tensor) -> Tensor:
        """Video logits ``(B, num_classes)``: the mean of the frames' logits."""
        return self.frame_logits(features).mean(dim=1)

    def forward(self, video: Tensor) -> Tensor:  # type: ignore[override]
        return self.forward_head(self.forward_features(video))


def pool_features(x: Tensor) -> Tensor:
    """Global average pool of a ``(N, C, H, W)`` map to ``(N, C)``, as torchvision's forward does."""
    return nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)


@register_model("recognition")
def mobilenet_v2(num_classes: int = 1000, dropout: float = 0.5, width_mult: float = 1.0) -> TSNMobileNetV2:
    """TSN MobileNetV2 (torchvision layout); dropout 0.5 as the original's stage 3."""
    return TSNMobileNetV2(num_classes=num_classes, dropout=dropout, width_mult=width_mult)


@register_model("recognition")
def mobilenet_v2_tiny(num_classes: int = 1000, dropout: float = 0.5) -> TSNMobileNetV2:
    """A 5k-parameter MobileNetV2 (width 0.25, three stages, 64 features) for tests and CPU smoke runs."""
    return TSNMobileNetV2(
        num_classes=num_classes, dropout=dropout, width_mult=0.25, inverted_residual_setting=_TINY_SETTING,
        last_channel=64,
    )
