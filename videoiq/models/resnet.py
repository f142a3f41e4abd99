"""TSN ResNets, full precision and any-precision, as one class with injected layers.

A video ``(B, T, C, H, W)`` is folded to ``B*T`` frames, each frame goes through a torchvision-layout
ResNet (v1.5: stride on the 3x3 conv), and the per-frame logits are averaged over ``T`` (the TSN
consensus). Parameter names match torchvision's (``conv1``, ``layer1.0.bn1``, ``fc``...), so a
torchvision state dict loads into the full-precision model key for key.

The any-precision variant is the same class built with :func:`ap_layers`:

* every conv inside ``layer1``-``layer4`` (including the downsample 1x1) is a
  :class:`~videoiq.quant.QuantConv2d` holding one master weight for all widths;
* every BatchNorm there is a :class:`~videoiq.quant.SwitchableBatchNorm2d` (``bn1.bn.<bits>``);
* each block quantizes its input (which the shortcut and downsample also take), and the output of
  each inner conv+BN+ReLU except the last, with a :class:`~videoiq.quant.PACT` per position
  (Bottleneck: ``act_in``, ``act1``, ``act2``; BasicBlock: ``act_in``, ``act1``);
* the stem conv, stem BN, pooling, dropout and the ``fc`` stay full precision, and the fc is
  shared by every width.

Port of the structure of sunxm2357/VideoIQ ``resnet_pact_ap.py`` (read, not copied).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ..quant import PACT, QuantConv2d, SwitchableBatchNorm2d, check_bit_widths
from ._registry import register_model


@dataclass(frozen=True)
class LayerFactory:
    """How a ResNet's residual stages make their convs, norms and activation quantizers."""

    conv: Callable[..., nn.Module]
    norm: Callable[[int], nn.Module]
    act_quant: Callable[[], nn.Module]


FULL_PRECISION_LAYERS = LayerFactory(conv=nn.Conv2d, norm=nn.BatchNorm2d, act_quant=nn.Identity)


def ap_layers(
    bit_widths: Sequence[int],
    *,
    switchable_bn: bool = True,
    switchable_clip: bool = True,
    clip_init: float = 2.0,
    mean_aligned: bool = False,
) -> LayerFactory:
    """Layer factory of the any-precision ResNet for a precision family (descending, master first)."""
    family = check_bit_widths(bit_widths)
    norm = partial(SwitchableBatchNorm2d, bit_widths=family) if switchable_bn else nn.BatchNorm2d
    return LayerFactory(
        conv=partial(QuantConv2d, bit_widths=family, mean_aligned=mean_aligned),
        norm=norm,
        act_quant=partial(PACT, family, init=clip_init, switchable=switchable_clip, mean_aligned=mean_aligned),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, layers: LayerFactory):
        super().__init__()
        self.act_in = layers.act_quant()
        self.conv1 = layers.conv(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = layers.norm(planes)
        self.act1 = layers.act_quant()
        self.conv2 = layers.conv(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = layers.norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        x = self.act_in(x)
        out = self.act1(self.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 with 4x expansion (ResNet-50/101)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, layers: LayerFactory):
        super().__init__()
        self.act_in = layers.act_quant()
        self.conv1 = layers.conv(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = layers.norm(planes)
        self.act1 = layers.act_quant()
        self.conv2 = layers.conv(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = layers.norm(planes)
        self.act2 = layers.act_quant()
        self.conv3 = layers.conv(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = layers.norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        x = self.act_in(x)
        out = self.act1(self.relu(self.bn1(self.conv1(x))))
        out = self.act2(self.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def fold_frames(video: Tensor, what: str) -> tuple[Tensor, int, int]:
    """``(B, T, C, H, W)`` -> ``(B*T, C, H, W)``, with a clear error for any other rank."""
    if video.dim() != 5:
        raise ValueError(f"{what} expects a video batch (B, T, C, H, W), got shape {tuple(video.shape)}")
    b, t = video.shape[:2]
    return video.flatten(0, 1), b, t


class ResNet(nn.Module):
    """TSN ResNet over ``(B, T, C, H, W)`` videos; full precision or any-precision by ``layers``.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        stage_blocks: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        num_classes: width of the shared classifier.
        width: channels of the stem and of stage 1 (64 for the paper models).
        dropout: dropout before the classifier (0.5 in the paper).
        layers: conv/norm/quantizer factory of the residual stages.
        stem_kernel, stem_stride: the full-precision stem conv (7x7, stride 2 in the paper models; a
            3x3, stride 1 stem keeps small models' never-quantized part as small a share of their cost).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        stage_blocks: Sequence[int],
        num_classes: int,
        *,
        width: int = 64,
        dropout: float = 0.5,
        layers: LayerFactory = FULL_PRECISION_LAYERS,
        stem_kernel: int = 7,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, width, kernel_size=stem_kernel, stride=stem_stride, padding=stem_kernel // 2,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, n in enumerate(stage_blocks):
            planes = width * 2**i
            stage, inplanes = self._make_stage(block, inplanes, planes, n, stride=1 if i == 0 else 2, layers=layers)
            self.add_module(f"layer{i + 1}", stage)
        self.num_stages = len(stage_blocks)
        self.num_features = inplanes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_stage(block, inplanes: int, planes: int, n: int, stride: int, layers: LayerFactory):
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                layers.conv(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                layers.norm(planes * block.expansion),
            )
        blocks = [block(inplanes, planes, stride, downsample, layers)]
        inplanes = planes * block.expansion
        blocks += [block(inplanes, planes, 1, None, layers) for _ in range(1, n)]
        return nn.Sequential(*blocks), inplanes

    def stem(self, frames: Tensor, passes: int = 1) -> Tensor:
        """The full-precision stem (conv, BN, ReLU, max-pool) of frames ``(N, C, H, W)``.

        Every width of an any-precision model computes the same stem, so a step that runs ``passes``
        widths computes it once; in training the stem BN's running statistics then take the update
        that ``passes`` identical forwards would have made (momentum ``1 - (1 - m) ** passes``).
        """
        if self.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            frames = frames.contiguous(memory_format=torch.channels_last)  # the model was put in channels_last
        bn = self.bn1
        momentum = bn.momentum
        if passes > 1 and bn.training and momentum is not None:
            bn.momentum = 1.0 - (1.0 - momentum) ** passes
        try:
            x = self.maxpool(self.relu(bn(self.conv1(frames))))
        finally:
            bn.momentum = momentum
        if passes > 1 and bn.training:
            bn.num_batches_tracked += passes - 1
        return x

    def stages(self, x: Tensor) -> Tensor:
        """The residual stages and global pooling of a stem output: features ``(N, num_features)``."""
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def frame_features(self, frames: Tensor) -> Tensor:
        """Pooled features ``(N, num_features)`` of a batch of frames ``(N, C, H, W)``."""
        return self.stages(self.stem(frames))

    def forward_features(self, video: Tensor) -> Tensor:
        """Per-frame pooled features ``(B, T, num_features)`` of a video batch ``(B, T, C, H, W)``."""
        x, b, t = fold_frames(video, type(self).__name__)
        return self.frame_features(x).view(b, t, -1)

    def frame_logits(self, features: Tensor) -> Tensor:
        """Each frame's own logits ``(B, T, num_classes)``: dropout, then the shared fc per frame."""
        return self.fc(self.dropout(features))

    def forward_head(self, features: Tensor) -> Tensor:
        """Video logits ``(B, num_classes)``: the mean of the frames' logits."""
        return self.frame_logits(features).mean(dim=1)

    def forward(self, video: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(video))


@dataclass(frozen=True)
class Arch:
    """A ResNet shape: block type, blocks per stage, stem/stage-1 width and the stem conv."""

    block: type[BasicBlock | Bottleneck]
    stage_blocks: tuple[int, ...]
    width: int = 64
    stem_kernel: int = 7
    stem_stride: int = 2


# "tiny" is for tests and CPU smoke runs; "demo" is the CPU demo's model, proportioned like ResNet-18
# (quantized stages dominate its cost) at 32-48 px.
_ARCHS: dict[str, Arch] = {
    "resnet18": Arch(BasicBlock, (2, 2, 2, 2)),
    "resnet34": Arch(BasicBlock, (3, 4, 6, 3)),
    "resnet50": Arch(Bottleneck, (3, 4, 6, 3)),
    "resnet101": Arch(Bottleneck, (3, 4, 23, 3)),
    "resnet_tiny": Arch(Bottleneck, (1, 1, 1, 1), width=8),
    "resnet_demo": Arch(BasicBlock, (2, 2, 2, 2), width=8, stem_kernel=3, stem_stride=1),
}


def _fp(arch: str, num_classes: int, dropout: float) -> ResNet:
    a = _ARCHS[arch]
    return ResNet(a.block, a.stage_blocks, num_classes, width=a.width, dropout=dropout, stem_kernel=a.stem_kernel,
                  stem_stride=a.stem_stride)


def _ap(arch: str, num_classes: int, dropout: float, *, bit_widths: Sequence[int] = (32, 4, 2),
        switchable_bn: bool = True, switchable_clip: bool = True, clip_init: float = 2.0,
        mean_aligned: bool = False) -> ResNet:
    a = _ARCHS[arch]
    layers = ap_layers(bit_widths, switchable_bn=switchable_bn, switchable_clip=switchable_clip, clip_init=clip_init,
                       mean_aligned=mean_aligned)
    return ResNet(a.block, a.stage_blocks, num_classes, width=a.width, dropout=dropout, layers=layers,
                  stem_kernel=a.stem_kernel, stem_stride=a.stem_stride)


# Full-precision builders, then their any-precision twins (``ap_<name>``: quantized residual stages, one master
# weight for all widths; the quantization keywords are :func:`_ap`'s: bit_widths, switchable_bn,
# switchable_clip, clip_init, mean_aligned).


@register_model("recognition")
def resnet18(num_classes: int = 1000, dropout: float = 0.5) -> ResNet:
    """Full-precision TSN ResNet-18."""
    return _fp("resnet18", num_classes, dropout)


@register_model("recognition")
def resnet34(num_classes: int = 1000, dropout: float = 0.5) -> ResNet:
    """Full-precision TSN ResNet-34."""
    return _fp("resnet34", num_classes, dropout)


@register_model("recognition")
def resnet50(num_classes: int = 1000, dropout: float = 0.5) -> ResNet:
    """Full-precision TSN ResNet-50."""
    return _fp("resnet50", num_classes, dropout)


@register_model("recognition")
def resnet101(num_classes: int = 1000, dropout: float = 0.5) -> ResNet:
    """Full-precision TSN ResNet-101."""
    return _fp("resnet101", num_classes, dropout)


@register_model("recognition")
def resnet_tiny(num_classes: int = 1000, dropout: float = 0.5) -> ResNet:
    """Full-precision TSN a tiny Bottleneck ResNet (width 8, one block per stage) for tests and CPU smoke runs."""
    return _fp("resnet_tiny", num_classes, dropout)


@register_model("recognition")
def resnet_demo(num_classes: int = 1000, dropout: float = 0.5) -> ResNet:
    """Full-precision TSN the demo's ResNet: ResNet-18's shape at width 8 with a 3x3 stride-1 stem, for 32-48 px."""
    return _fp("resnet_demo", num_classes, dropout)


@register_model("recognition")
def ap_resnet18(num_classes: int = 1000, dropout: float = 0.5, **quant: Any) -> ResNet:
    """Any-precision TSN ResNet-18."""
    return _ap("resnet18", num_classes, dropout, **quant)


@register_model("recognition")
def ap_resnet34(num_classes: int = 1000, dropout: float = 0.5, **quant: Any) -> ResNet:
    """Any-precision TSN ResNet-34."""
    return _ap("resnet34", num_classes, dropout, **quant)


@register_model("recognition")
def ap_resnet50(num_classes: int = 1000, dropout: float = 0.5, **quant: Any) -> ResNet:
    """Any-precision TSN ResNet-50."""
    return _ap("resnet50", num_classes, dropout, **quant)


@register_model("recognition")
def ap_resnet101(num_classes: int = 1000, dropout: float = 0.5, **quant: Any) -> ResNet:
    """Any-precision TSN ResNet-101."""
    return _ap("resnet101", num_classes, dropout, **quant)


@register_model("recognition")
def ap_resnet_tiny(num_classes: int = 1000, dropout: float = 0.5, **quant: Any) -> ResNet:
    """Any-precision TSN tiny ResNet."""
    return _ap("resnet_tiny", num_classes, dropout, **quant)


@register_model("recognition")
def ap_resnet_demo(num_classes: int = 1000, dropout: float = 0.5, **quant: Any) -> ResNet:
    """Any-precision TSN demo ResNet."""
    return _ap("resnet_demo", num_classes, dropout, **quant)
