"""Quantizers and bit-switchable layers of the any-precision network.

This module owns every piece of quantization numerics in videoiq:

* :func:`quantize_weight` - DoReFa weights quantized once at the *master* width ``B = max(family)``;
  a lower width ``b`` drops the ``B - b`` least significant bits of that integer grid (floor), is
  de-quantized on the master scale, and the whole tensor is rescaled so its mean matches the
  master-precision mean. The backward pass is the identity over the rounding, truncation and
  rescale (straight-through estimator); gradients flow through ``tanh`` and the max.
* :func:`quantize_activation` - one-sided PACT: clip at a learnable ``alpha`` and round to
  ``2**bits - 1`` levels (1 bit: ``sign(x)``; optionally rescaled to the input's mean). STE: the
  input gets the gradient where ``0 <= x <= alpha``; ``alpha`` gets the sum of the gradient where
  ``x >= alpha``.
* :class:`QuantConv2d`, :class:`PACT` and :class:`SwitchableBatchNorm2d` - modules that hold one
  master weight, one clip per bit width and one BatchNorm per bit width respectively. The active bit
  width is module state, switched for a whole model with :func:`set_bit_width` or the
  :func:`bit_width` context manager (this replaces the original's ``forward(x, bit)`` plumbing).

The arithmetic follows the original ``models/twod_models/ops/imagenet_pact.py`` of
sunxm2357/VideoIQ (read, not copied): scales are computed in float32 from ``2**bits - 1``, so for a
32-bit master ``2**32 - 1`` rounds to ``2**32`` exactly as it did there, and the "32-bit" option
means tanh-normalised weights and activations clipped at ``alpha_32``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

MIN_BITS, MAX_BITS = 1, 32

MIN_CLIP = 1e-3
"""PACT clips below this act as this. Nothing keeps a learned clip positive, and in the original a clip that
an update pushed below zero turns its layer into a constant (every input clipped to a negative number),
a state the gradient rarely leaves; here such a layer still passes ``[0, MIN_CLIP]``, and the gradient
(the same masks, taken at the floor) can bring the clip back."""


def check_bit_widths(bit_widths: Sequence[int], what: str = "bit_widths") -> tuple[int, ...]:
    """Validate a precision family and return it as a tuple.

    The family must be non-empty, without repeats, within [1, 32] and in descending order, because
    index 0 is the master width that lower widths are truncated from.
    """
    family = tuple(int(b) for b in bit_widths)
    if not family:
        raise ValueError(f"{what}: expected at least one bit width, got none")
    bad = [b for b in family if not MIN_BITS <= b <= MAX_BITS]
    if bad:
        raise ValueError(f"{what}: bit widths must lie in [{MIN_BITS}, {MAX_BITS}], got {bad}")
    if len(set(family)) != len(family):
        raise ValueError(f"{what}: bit widths must be distinct, got {list(family)}")
    if list(family) != sorted(family, reverse=True):
        raise ValueError(
            f"{what}: bit widths must be in descending order (the first one is the master width "
            f"lower widths are truncated from), got {list(family)}"
        )
    if family[0] < 2:
        raise ValueError(f"{what}: the master width (first entry) must be at least 2, got {family[0]}")
    return family


def _grid(bits: int, master_bits: int) -> tuple[float, int]:
    """The master grid's scale ``2**B - 1`` and the spacing of width ``bits``' levels on it."""
    return float(2**master_bits - 1), 2 ** (master_bits - bits)


def _truncated_levels(w_n: Tensor, bits: int, master_bits: int) -> tuple[Tensor, Tensor]:
    """Integer levels of width ``bits`` (a new float tensor: the master grid's integers with the low bits
    dropped) and the master-precision mean the truncated weight is re-aligned to."""
    scale, step = _grid(bits, master_bits)  # a Python float times a float32 tensor stays float32
    levels = torch.round(w_n * scale)
    master_mean = levels.mean() / scale
    if step != 1:
        levels.div_(step).floor_()
    return levels, master_mean


def _realignment(v: Tensor, w_n: Tensor, master_mean: Tensor, mean_aligned: bool) -> Tensor:
    """The factor that brings the truncated weight ``v``'s mean back to the target mean."""
    target = w_n.mean() if mean_aligned else master_mean
    mean = v.mean()
    # An all-zero truncation has no mean to re-align; the original leaves it unscaled.
    return torch.where(mean != 0, target / mean, torch.ones_like(mean))


class _TruncatedDoReFa(torch.autograd.Function):
    """Rounding at the master width, LSB truncation, mean re-alignment and the map to ``[-1, 1]``
    (``2 v - 1``), in place on one buffer; the backward is the identity through the rounding (times 2)."""

    @staticmethod
    def forward(ctx, w_n: Tensor, master_bits: int, bits: int, mean_aligned: bool) -> Tensor:  # type: ignore[override]
        levels, master_mean = _truncated_levels(w_n, bits, master_bits)
        scale, step = _grid(bits, master_bits)
        v = levels.mul_(step).div_(scale)
        return v.mul_(2 * _realignment(v, w_n, master_mean, mean_aligned)).sub_(1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        return 2 * grad, None, None, None


def normalize_weight(weight: Tensor) -> Tensor:
    """DoReFa's ``tanh(W) / (2 max|tanh(W)|) + 0.5`` in ``[0, 1]``, with gradients (the part of the weight
    quantizer every width shares)."""
    w = torch.tanh(weight)
    return w / (2 * w.abs().max()) + 0.5


def quantize_normalized(w_n: Tensor, bits: int, master_bits: int, mean_aligned: bool = False) -> Tensor:
    """The width-specific rest of :func:`quantize_weight`, from :func:`normalize_weight`'s output."""
    if not 1 <= bits <= master_bits:
        raise ValueError(f"weight bits must lie in [1, master_bits={master_bits}], got {bits}")
    return _TruncatedDoReFa.apply(w_n, master_bits, bits, mean_aligned)


def quantize_weight(weight: Tensor, bits: int, master_bits: int, mean_aligned: bool = False) -> Tensor:
    """DoReFa weight quantization at ``master_bits`` truncated to ``bits``.

    Args:
        weight: full-precision master weight, any shape.
        bits: requested width, ``1 <= bits <= master_bits``.
        master_bits: the family's maximum width ``B`` that the integer grid is built at.
        mean_aligned: rescale to the mean of the un-quantized normalised weight instead of the
            master-precision mean (the original's ``--mean_aligned``).

    Returns:
        The quantized weight in ``[-1, 1]``, same shape and dtype as ``weight``.
    """
    return quantize_normalized(normalize_weight(weight), bits, master_bits, mean_aligned)


def weight_levels(weight: Tensor, bits: int, master_bits: int, mean_aligned: bool = False) -> tuple[Tensor, float]:
    """The integer form of :func:`quantize_weight`: ``(levels, gain)`` with
    ``quantize_weight(weight, bits, master_bits, mean_aligned) == gain * levels - 1`` up to float rounding.

    ``levels`` are int64 in ``[0, 2**bits]`` (for a 32-bit master; ``[0, (2**B - 1) // 2**(B - bits)]`` in
    general), one ``gain`` per tensor. Integer kernels compute with these (``videoiq.models.int8``).
    """
    if not 1 <= bits <= master_bits:
        raise ValueError(f"weight bits must lie in [1, master_bits={master_bits}], got {bits}")
    with torch.no_grad():
        w_n = normalize_weight(weight.float())
        levels, master_mean = _truncated_levels(w_n, bits, master_bits)
        scale, step = _grid(bits, master_bits)
        ratio = _realignment(levels * step / scale, w_n, master_mean, mean_aligned)
        return levels.long(), float(2 * ratio) * step / scale


def activation_scale(alpha: Tensor, bits: int) -> float:
    """Codes per unit of a PACT activation at ``bits``: :func:`quantize_activation`'s output is
    ``round(min(x, alpha) * s) / s`` with this ``s = (2**bits - 1) / alpha`` (the clip floored at :data:`MIN_CLIP`)."""
    return float((2**bits - 1) / alpha.detach().float().clamp_min(MIN_CLIP))


class _PACT(torch.autograd.Function):
    """One-sided PACT forward with the original's straight-through backward for ``x`` and ``alpha``."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, bits: int, mean_aligned: bool) -> Tensor:  # type: ignore[override]
        a = alpha.detach().to(x.dtype).clamp_min(MIN_CLIP)
        # Boolean masks are all the backward needs: 1 byte per element instead of saving x.
        clipped = x >= a
        passes = (x <= a).logical_and_(x >= 0)
        ctx.save_for_backward(passes, clipped)
        ctx.alpha_shape = alpha.shape
        if bits == 1:  # the original's 1-bit activation is sign(x), not a 2-level grid up to alpha
            return torch.sign(x)
        scale = (2**bits - 1) / a
        q = torch.minimum(x, a).mul_(scale).round_().div_(scale)
        if mean_aligned:  # the original's --mean_aligned also rescales activations to the input's mean
            mean = q.mean()
            q = q.mul_(torch.where(mean != 0, x.mean() / mean, torch.ones_like(mean)))
        return q

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:  # type: ignore[override]
        passes, clipped = ctx.saved_tensors
        grad_x = grad * passes
        grad_alpha = torch.where(clipped, grad, 0).sum().reshape(ctx.alpha_shape)
        return grad_x, grad_alpha, None, None


def quantize_activation(x: Tensor, alpha: Tensor, bits: int, mean_aligned: bool = False) -> Tensor:
    """One-sided PACT: ``round(min(x, alpha) * s) / s`` with ``s = (2**bits - 1) / alpha``.

    ``x`` is expected to be non-negative (it follows a ReLU or the max-pool). A negative value
    passes through rounded and gets no gradient, as in the original's backward; the original's
    forward check for negatives is not repeated because it forces a device sync on every call.
    As in the original, 1 bit is ``sign(x)``, and ``mean_aligned`` multiplies the result by
    ``mean(x) / mean(result)`` (forward only; the backward is the same straight-through estimator).
    A clip below :data:`MIN_CLIP` acts as :data:`MIN_CLIP` (the one deliberate difference).
    """
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"activation bits must lie in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    return _PACT.apply(x, alpha, bits, mean_aligned)


class BitSwitchable:
    """Mixin of every layer whose computation depends on the active bit width.

    Call :meth:`_init_bits` after ``nn.Module.__init__``. ``bit_widths[0]`` is the master width.
    """

    bit_widths: tuple[int, ...]
    active_bits: int

    def _init_bits(self, bit_widths: Sequence[int]) -> None:
        self.bit_widths = check_bit_widths(bit_widths)
        self.active_bits = self.bit_widths[0]

    @property
    def master_bits(self) -> int:
        return self.bit_widths[0]

    def set_active_bits(self, bits: int) -> None:
        if bits not in self.bit_widths:
            raise ValueError(f"{type(self).__name__}: bit width {bits} is not in its family {list(self.bit_widths)}")
        self.active_bits = bits

    def _bits_repr(self) -> str:
        return f"bit_widths={list(self.bit_widths)}, active_bits={self.active_bits}"


class QuantConv2d(BitSwitchable, nn.Conv2d):
    """A Conv2d with one full-precision master weight, quantized on the fly at the active bit width."""

    def __init__(self, *args, bit_widths: Sequence[int], mean_aligned: bool = False, **kwargs) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_bits(bit_widths)
        self.mean_aligned = mean_aligned
        self.shared_normalized: Tensor | None = None  # set by shared_weight_normalization()
        self._frozen: dict[int, tuple[tuple, Tensor]] = {}  # bits -> (weight identity, quantized weight)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)

    def quantized_weight(self) -> Tensor:
        """The master weight quantized at the active width.

        When no gradient can reach the weight (``no_grad``, or a frozen weight as in the policy
        stage), the result is kept per width until the weight changes (an optimizer step or a load
        bumps its version), so inference quantizes each weight once, not once per call.
        """
        frozen = not (torch.is_grad_enabled() and self.weight.requires_grad)
        if not frozen:
            self._frozen.clear()  # training: the weight moves every step, keep no stale copies
        else:
            key = (self.weight._version, self.weight.data_ptr(), self.weight.device, self.weight.dtype)
            hit = self._frozen.get(self.active_bits)
            if hit is not None and hit[0] == key:
                return hit[1]
        w_n = self.shared_normalized if self.shared_normalized is not None else normalize_weight(self.weight)
        w = quantize_normalized(w_n, self.active_bits, self.master_bits, self.mean_aligned)
        if frozen:
            self._frozen[self.active_bits] = (key, w.detach())
        return w

    def __getstate__(self) -> dict:
        # copies and pickles (deepcopy for FLOP counting, DDP) start without the cached weights
        return {**self.__dict__, "_frozen": {}}

    def extra_repr(self) -> str:
        return f"{nn.Conv2d.extra_repr(self)}, {self._bits_repr()}"


class PACT(BitSwitchable, nn.Module):
    """One-sided PACT activation quantizer with a learnable clip ``alpha`` per bit width.

    With ``switchable=False`` a single clip is shared by every width (the original without
    ``--switch_clipval``). Parameters are named ``alpha.<bits>`` (or ``alpha.shared``).
    ``mean_aligned`` rescales each output to its input's mean (the original's ``--mean_aligned``).
    """

    def __init__(self, bit_widths: Sequence[int], init: float = 2.0, switchable: bool = True,
                 mean_aligned: bool = False) -> None:
        nn.Module.__init__(self)
        self._init_bits(bit_widths)
        if not init > 0:
            raise ValueError(f"PACT clip init must be positive, got {init}")
        keys = [str(b) for b in self.bit_widths] if switchable else ["shared"]
        self.switchable = switchable
        self.mean_aligned = mean_aligned
        self.alpha = nn.ParameterDict({k: nn.Parameter(torch.tensor(float(init))) for k in keys})

    def clip_for(self, bits: int) -> nn.Parameter:
        """The clip parameter used at ``bits``."""
        return self.alpha[str(bits) if self.switchable else "shared"]

    def forward(self, x: Tensor) -> Tensor:
        return quantize_activation(x, self.clip_for(self.active_bits), self.active_bits, self.mean_aligned)

    def extra_repr(self) -> str:
        return self._bits_repr() + (", mean_aligned=True" if self.mean_aligned else "")


class SwitchableBatchNorm2d(BitSwitchable, nn.Module):
    """One BatchNorm2d per bit width (``bn.<bits>``); the active width picks which one normalises."""

    def __init__(self, num_features: int, bit_widths: Sequence[int]) -> None:
        nn.Module.__init__(self)
        self._init_bits(bit_widths)
        self.bn = nn.ModuleDict({str(b): nn.BatchNorm2d(num_features) for b in self.bit_widths})

    def forward(self, x: Tensor) -> Tensor:
        return self.bn[str(self.active_bits)](x)

    def extra_repr(self) -> str:
        return self._bits_repr()


def _switchables(model: nn.Module) -> Iterator[nn.Module]:
    return (m for m in model.modules() if isinstance(m, BitSwitchable))


def bit_widths_of(model: nn.Module) -> tuple[int, ...] | None:
    """The precision family of an any-precision model, or ``None`` for a model without quantizers.

    Raises if the model mixes families, which no videoiq builder produces.
    """
    families = {m.bit_widths for m in _switchables(model)}
    if len(families) > 1:
        raise ValueError(f"model mixes bit-width families {sorted(families)}")
    return families.pop() if families else None


def set_bit_width(model: nn.Module, bits: int) -> None:
    """Make every quantized layer of ``model`` compute at ``bits``."""
    found = False
    for m in _switchables(model):
        m.set_active_bits(bits)
        found = True
    if not found:
        raise ValueError(f"{type(model).__name__} has no bit-switchable layers; it cannot run at {bits} bits")


@contextlib.contextmanager
def bit_width(model: nn.Module, bits: int) -> Iterator[nn.Module]:
    """Context manager: run ``model`` at ``bits`` inside the block, then restore each layer's width."""
    previous = [(m, m.active_bits) for m in _switchables(model)]
    set_bit_width(model, bits)
    try:
        yield model
    finally:
        for m, b in previous:
            m.active_bits = b


@contextlib.contextmanager
def shared_weight_normalization(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, each quantized conv normalises its master weight once and every width reuses it.

    For a step that runs several widths (any-precision training, the policy stage's dense forward):
    the gradients are the same (they add up at the shared tensor), the work is done once.
    """
    # frozen weights need no sharing: their quantized weights are kept (QuantConv2d.quantized_weight)
    trains = torch.is_grad_enabled()
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d) and trains and m.weight.requires_grad]
    for conv in convs:
        conv.shared_normalized = normalize_weight(conv.weight)
    try:
        yield model
    finally:
        for conv in convs:
            conv.shared_normalized = None


def clip_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """PACT clips grouped by bit width (``"32"``, ``"4"``, ... or ``"shared"``) for per-bit optimizer groups."""
    groups: dict[str, list[nn.Parameter]] = {}
    for m in model.modules():
        if isinstance(m, PACT):
            for key, p in m.alpha.items():
                groups.setdefault(key, []).append(p)
    return groups


__all__ = [
    "BitSwitchable",
    "PACT",
    "QuantConv2d",
    "SwitchableBatchNorm2d",
    "activation_scale",
    "bit_width",
    "bit_widths_of",
    "check_bit_widths",
    "clip_parameters",
    "normalize_weight",
    "quantize_activation",
    "quantize_normalized",
    "quantize_weight",
    "set_bit_width",
    "shared_weight_normalization",
    "weight_levels",
]
