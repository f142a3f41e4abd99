"""The integer inference engine of the any-precision ResNet: low-bit frames on int8 CPU kernels.

Fake quantization (:mod:`videoiq.quant`) computes every width with float kernels, so a 2-bit frame costs
what a 32-bit frame costs. The arithmetic allows integer kernels with the same results:

* the weight of a quantized conv at width ``b`` is ``gain * n - 1`` with integer levels
  ``n`` in ``[0, 2**b]`` (:func:`~videoiq.quant.weight_levels`); with ``z`` the levels' midpoint,
  ``m = n - z`` fits int8 for ``b <= 7`` (at 8 bits the grid has 257 levels, one too many);
* a PACT activation at width ``b`` is ``q / s`` with integer codes ``q`` in ``[0, 2**b - 1]``, which fit uint8;
* so ``conv(x, w) = (gain / s) * conv(q, m) + ((gain * z - 1) / s) * box(q)``, where ``conv(q, m)`` is an
  int8 x uint8 convolution with int32 accumulation (exact) and ``box(q)``, the sum of the codes under each
  window, is exact in float32. The box term is there because the weights' zero is not on their grid
  (the ``- 1`` of DoReFa and the per-tensor mean re-alignment); it costs one channel sum per activation.

Each conv's BatchNorm is folded into the per-channel output scale and bias, and the ReLU and the next
PACT (clip, scale, round) are one epilogue that writes the next layer's uint8 codes and their channel
sum. The convolutions are PyTorch's oneDNN quantized ops (``onednn::qconv_prepack``,
``onednn::qconv2d_pointwise``, the kernels Inductor's x86 quantization lowers to); weights are packed once
per width when the engine is built. The epilogues are compiled with Inductor when a C++ compiler is
present (one pass over the conv output instead of four) and run eagerly otherwise (same numbers, slower).

Widths of 8 bits and more run float convolutions on the quantized weights with BN folded. At 32 bits the
activation rounding (``2**32 - 1`` levels) is finer than float32 except below ``alpha * 2**-24``, where it
moves a value by at most ``alpha * 2**-33``; that width's activation is a clamp to ``[0, alpha]``.

The full-precision stem (its BN folded) and the fc stay float. Results equal the fake-quantized model's up to float
rounding in the rescales (which can move a code by one where a value falls on a rounding boundary).
"""
from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VideoiqError
from ..quant import (
    MIN_CLIP,
    PACT,
    QuantConv2d,
    SwitchableBatchNorm2d,
    activation_scale,
    bit_width,
    quantize_activation,
    weight_levels,
)
from .resnet import BasicBlock, Bottleneck, ResNet

INT8_MAX_BITS = 7
"""The widest width whose weight levels (``2**b + 1`` of them) fit int8 once centred."""

ENGINES = ("float", "int8")


class EngineUnavailable(VideoiqError, ValueError):
    """The integer engine cannot run here (device, build or model); the message is one line saying why."""


def int8_unavailable_reason(device: torch.device | str = "cpu") -> str | None:
    """Why the integer engine cannot run on ``device`` with this PyTorch build, or ``None`` if it can."""
    if torch.device(device).type != "cpu":
        return f"the int8 engine runs on CPU only (got device {device}); use engine float on a GPU"
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn), which the int8 engine's kernels come from"
    if not hasattr(torch.ops.onednn, "qconv2d_pointwise"):
        return f"PyTorch {torch.__version__} has no onednn::qconv2d_pointwise kernel (2.2 or newer has)"
    return None


def check_engine(engine: str, device: torch.device | str = "cpu") -> None:
    """Raise a one-line ValueError / :class:`EngineUnavailable` unless ``engine`` can run on ``device``."""
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "int8":
        reason = int8_unavailable_reason(device)
        if reason is not None:
            raise EngineUnavailable(reason)


# ---- the epilogues: everything between one conv and the next, on the conv's float output -----------------

def _stem_codes(x: Tensor, mult: Tensor, qmax: Tensor, pool: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """The stem's ReLU and max-pool, then the first block's PACT: uint8 codes and their sum over channels."""
    q = torch.round(F.max_pool2d(torch.relu(x), *pool) * mult).clamp(min=0).minimum(qmax).to(torch.uint8)
    return q, q.sum(dim=1, keepdim=True, dtype=torch.float32)


def _codes(t: Tensor, coef: Tensor, box: Tensor, qmax: Tensor) -> tuple[Tensor, Tensor]:
    """uint8 codes of ``t + coef * box`` (already in code units) and their sum over channels."""
    q = torch.round(t + coef * box).clamp(min=0).minimum(qmax).to(torch.uint8)
    return q, q.sum(dim=1, keepdim=True, dtype=torch.float32)


def _codes_residual(t: Tensor, coef: Tensor, box: Tensor, identity: Tensor, id_scale: Tensor,
                    qmax: Tensor) -> tuple[Tensor, Tensor]:
    """As :func:`_codes`, with the shortcut (codes or floats times ``id_scale``) added first."""
    q = torch.round(t + coef * box + identity * id_scale).clamp(min=0).minimum(qmax).to(torch.uint8)
    return q, q.sum(dim=1, keepdim=True, dtype=torch.float32)


def _floats(t: Tensor, coef: Tensor, box: Tensor) -> Tensor:
    """The float output of a conv with no activation after it (the downsample)."""
    return t + coef * box


def _floats_residual(t: Tensor, coef: Tensor, box: Tensor, identity: Tensor, id_scale: Tensor) -> Tensor:
    """The last block's output: ReLU of the conv plus the shortcut."""
    return torch.relu(t + coef * box + identity * id_scale)


@dataclass
class _Epilogues:
    """The five epilogues, eager or compiled (the same functions either way)."""

    stem_codes: Callable[..., tuple[Tensor, Tensor]]
    codes: Callable[..., tuple[Tensor, Tensor]]
    codes_residual: Callable[..., tuple[Tensor, Tensor]]
    floats: Callable[..., Tensor]
    floats_residual: Callable[..., Tensor]


_EAGER = _Epilogues(_stem_codes, _codes, _codes_residual, _floats, _floats_residual)
_compiled: _Epilogues | None = None


def compiler_available() -> bool:
    """Whether Inductor can build CPU kernels here (it needs a C++ compiler)."""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def _epilogues(compiled: bool) -> _Epilogues:
    """The eager epilogues, or the compiled ones (compiled once per process, for every shape: ``dynamic``)."""
    global _compiled
    if not compiled:
        return _EAGER
    if _compiled is None:
        # Inductor's C++ build warns that this CPU-only machine has no CUDA runtime: not news to an int8 user
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

        def comp(fn: Callable) -> Callable:
            return torch.compile(fn, dynamic=True, fullgraph=True)

        _compiled = _Epilogues(comp(_stem_codes), comp(_codes), comp(_codes_residual), comp(_floats),
                               comp(_floats_residual))
    return _compiled


# ---- folded layers ---------------------------------------------------------------------------------------

def _bn(norm: nn.Module, bits: int) -> nn.BatchNorm2d:
    return norm.bn[str(bits)] if isinstance(norm, SwitchableBatchNorm2d) else norm


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """The eval-mode BatchNorm as ``y = g * x + h`` per channel (float64 for the folding)."""
    g = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return g, bn.bias.double() - bn.running_mean.double() * g


def _box(sums: Tensor, conv: nn.Conv2d) -> Tensor:
    """The sum of the codes under each of ``conv``'s windows, from their per-pixel channel sums."""
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    if k == 1:
        return sums if s == 1 else sums[:, :, ::s, ::s]
    return F.avg_pool2d(sums, k, s, p, count_include_pad=True, divisor_override=1)


class _IntConv:
    """One quantized conv and its BN at a width of at most 7 bits, on an int8 kernel.

    Input: uint8 codes with dequantization step ``in_step``. Output (float): the BN output times
    ``out_mult`` (the next PACT's codes per unit, or 1), computed as ``t + coef * box``.
    """

    def __init__(self, conv: QuantConv2d, norm: nn.Module, bits: int, in_step: float, out_mult: float) -> None:
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.kernel_size[0] != conv.kernel_size[1]:
            raise EngineUnavailable(f"the int8 engine supports square, ungrouped, undilated convs; got {conv}")
        levels, gain = weight_levels(conv.weight, bits, conv.master_bits, conv.mean_aligned)
        lo, hi = int(levels.min()), int(levels.max())
        zero = (lo + hi + 1) // 2
        if hi - zero > 127 or lo - zero < -128:
            raise EngineUnavailable(f"{bits}-bit weight levels span [{lo}, {hi}], more than int8 holds")
        g, h = _bn_affine(_bn(norm, bits))
        w_scale = (gain * g * out_mult).float()
        self.w_scale = w_scale
        self.bias = (h * out_mult).float()
        self.coef = (in_step * (gain * zero - 1) * g * out_mult).float().view(1, -1, 1, 1)
        self.in_step = in_step
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.conv = conv
        self.zero_points = torch.zeros(len(w_scale), dtype=torch.long)
        self.weight = (levels - zero).to(torch.int8)
        self.packed: dict[tuple[int, ...], Tensor] = {}

    def pack(self, input_shape: tuple[int, ...]) -> Tensor:
        """The weight in the layout oneDNN's kernel wants for inputs of this spatial size (packed once per
        size: without the shape, the kernel reorders a guessed layout on every call)."""
        key = tuple(input_shape[1:])
        packed = self.packed.get(key)
        if packed is None:
            packed = torch.ops.onednn.qconv_prepack(self.weight, self.w_scale, self.in_step, 0, self.stride,
                                                    self.padding, [1, 1], 1, [1, *key])
            self.packed[key] = packed
        return packed

    def __call__(self, codes: Tensor, sums: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(t, coef, box)``: the conv's scaled float output before the box term, and the box term's parts."""
        t = torch.ops.onednn.qconv2d_pointwise(codes, self.in_step, 0, self.pack(tuple(codes.shape)), self.w_scale,
                                               self.zero_points, self.bias, self.stride, self.padding, [1, 1], 1,
                                               1.0, 0, torch.float32, "none", [], "")
        return t, self.coef, _box(sums, self.conv)


class _FloatConv:
    """A conv with its BN folded in, on float kernels: the full-precision stem, or a quantized conv at a width
    of 8 bits or more (:meth:`quantized`)."""

    def __init__(self, weight: Tensor, bn: nn.BatchNorm2d, conv: nn.Conv2d) -> None:
        g, h = _bn_affine(bn)
        self.weight = (weight.double() * g.view(-1, 1, 1, 1)).float().contiguous(memory_format=torch.channels_last)
        self.bias = h.float()
        self.stride, self.padding = conv.stride, conv.padding

    @classmethod
    def quantized(cls, conv: QuantConv2d, norm: nn.Module, bits: int) -> _FloatConv:
        """``conv`` at ``bits`` (its weight quantized as fake quantization does) with that width's BN."""
        with bit_width(conv, bits):
            return cls(conv.quantized_weight(), _bn(norm, bits), conv)

    def __call__(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


def _float_act(pact: PACT, bits: int) -> Callable[[Tensor], Tensor]:
    """ReLU then the PACT at ``bits`` on a float tensor (in place where it can)."""
    alpha = pact.clip_for(bits)
    if 2**bits - 1 > 2**24:  # finer than float32: the rounding is the identity up to float rounding (module doc)
        a = float(alpha.detach().clamp_min(MIN_CLIP))
        return lambda x: x.clamp_(0, a)
    return lambda x: quantize_activation(x.clamp_(min=0), alpha, bits)


@dataclass
class _IntBlock:
    """A residual block at an integer width: its inner convs (each into the next PACT's codes), its last conv
    (into the next block's codes, or floats after the last block), the downsample, the input's dequantization
    step and the next block's codes per unit."""

    layers: list[_IntConv]
    last: _IntConv
    down: _IntConv | None
    in_step: float
    out_mult: float


@dataclass
class _FloatBlock:
    """A residual block at a float width: its input's activation, inner (conv, activation) pairs, last conv and
    downsample."""

    layers: list[tuple[_FloatConv, Callable[[Tensor], Tensor]]]
    last: _FloatConv
    down: _FloatConv | None
    act_in: Callable[[Tensor], Tensor]


class Int8ResNet:
    """An any-precision :class:`ResNet` in eval mode, ready to run at each of its widths on integer kernels.

    Build it once (it packs every width's weights); :meth:`frame_features` then runs frames at a width. It
    holds a snapshot of the model's weights: rebuild it after they change.

    Args:
        model: an any-precision ResNet (an ``ap_*`` model) whose weights are final.
        compiled: compile the epilogues with Inductor (default: when a C++ compiler is present).
    """

    def __init__(self, model: ResNet, compiled: bool | None = None) -> None:
        reason = int8_unavailable_reason(next(model.parameters()).device)
        if reason is not None:
            raise EngineUnavailable(reason)
        pacts = [m for m in model.modules() if isinstance(m, PACT)]
        if not pacts:
            raise EngineUnavailable("the int8 engine runs any-precision models (ap_*); this one has no quantizers")
        if any(p.mean_aligned for p in pacts):
            raise EngineUnavailable("the int8 engine cannot run mean-aligned activations (quant.mean_aligned)")
        self.model = model
        self.bit_widths = pacts[0].bit_widths
        if min(self.bit_widths) < 2:
            raise EngineUnavailable("the int8 engine needs widths of at least 2 bits (1 bit is sign(x))")
        self.compiled = compiler_available() if compiled is None else compiled
        self.blocks = [b for i in range(1, model.num_stages + 1) for b in getattr(model, f"layer{i}")]
        with torch.no_grad():
            self.stem = _FloatConv(model.conv1.weight, model.bn1, model.conv1)  # full precision, its BN folded
            self._programs: dict[int, list[_IntBlock] | list[_FloatBlock]] = {
                bits: self._build(bits) for bits in self.bit_widths}

    def _convs(self, block: BasicBlock | Bottleneck) -> list[tuple[QuantConv2d, nn.Module, PACT | None]]:
        """The block's main-path (conv, norm, activation after it) in order; the last has no activation."""
        if isinstance(block, Bottleneck):
            return [(block.conv1, block.bn1, block.act1), (block.conv2, block.bn2, block.act2),
                    (block.conv3, block.bn3, None)]
        return [(block.conv1, block.bn1, block.act1), (block.conv2, block.bn2, None)]

    def _float_block(self, block: BasicBlock | Bottleneck, bits: int) -> _FloatBlock:
        convs = self._convs(block)
        return _FloatBlock([(_FloatConv.quantized(conv, norm, bits), _float_act(act, bits))
                            for conv, norm, act in convs[:-1]],
                           _FloatConv.quantized(*convs[-1][:2], bits),
                           None if block.downsample is None else _FloatConv.quantized(*block.downsample[:2], bits),
                           _float_act(block.act_in, bits))

    def _build(self, bits: int) -> list[_IntBlock] | list[_FloatBlock]:
        """Every block's folded layers at ``bits``: integer kernels up to :data:`INT8_MAX_BITS`, float above."""
        if bits > INT8_MAX_BITS:
            return [self._float_block(block, bits) for block in self.blocks]
        program = []
        for i, block in enumerate(self.blocks):
            convs = self._convs(block)
            step = 1.0 / activation_scale(block.act_in.clip_for(bits), bits)
            layers, in_step = [], step
            for conv, norm, act in convs[:-1]:
                mult = activation_scale(act.clip_for(bits), bits)
                layers.append(_IntConv(conv, norm, bits, in_step, mult))
                in_step = 1.0 / mult
            last_block = i + 1 == len(self.blocks)
            out_mult = 1.0 if last_block else activation_scale(self.blocks[i + 1].act_in.clip_for(bits), bits)
            down = None if block.downsample is None else _IntConv(*block.downsample[:2], bits, step, 1.0)
            program.append(_IntBlock(layers, _IntConv(*convs[-1][:2], bits, in_step, out_mult), down, step, out_mult))
        return program

    def frame_features(self, frames: Tensor, bits: int) -> Tensor:
        """Pooled features ``(N, num_features)`` of frames ``(N, C, H, W)`` at width ``bits``, equal to
        the model's ``frame_features`` at that width up to float rounding."""
        if self.model.training:
            raise ValueError("Int8ResNet runs a model in eval mode (its BatchNorms use running statistics); "
                             "call model.eval() first")
        if bits not in self._programs:
            raise ValueError(f"bit width {bits} is not in the model's family {list(self.bit_widths)}")
        with torch.no_grad():
            x = self.stem(frames.contiguous(memory_format=torch.channels_last))
            program = self._programs[bits]
            if bits <= INT8_MAX_BITS:
                x = self._run_int(x, program, bits)
            else:
                x = self._run_float(self.model.maxpool(torch.relu_(x)), program)
            return torch.flatten(self.model.avgpool(x), 1)

    def _run_int(self, x: Tensor, program: list[_IntBlock], bits: int) -> Tensor:
        if not self.compiled:
            return self._run_int_with(_EAGER, x, program, bits)
        try:
            return self._run_int_with(_epilogues(True), x, program, bits)
        except Exception as e:  # a compiler that is present but cannot build: same numbers, eagerly
            if not self._compile_failed(e):
                raise
            return self._run_int_with(_EAGER, x, program, bits)

    def _compile_failed(self, error: Exception) -> bool:
        """Whether ``error`` is Inductor failing to build the epilogues; if so, warn once and stop compiling."""
        from torch._dynamo.exc import TorchDynamoException
        from torch._inductor.exc import CppCompileError

        if not isinstance(error, (TorchDynamoException, CppCompileError)):
            return False
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(f"int8 engine: compiling its epilogues failed ({first}); running them eagerly "
                      "(the same numbers, slower)", stacklevel=3)
        self.compiled = False
        return True

    def _run_int_with(self, ep: _Epilogues, x: Tensor, program: list[_IntBlock], bits: int) -> Tensor:
        """The integer widths' program from the stem conv's output ``x``."""
        qmax = torch.tensor(float(2**bits - 1))
        pool = self.model.maxpool
        codes, sums = ep.stem_codes(x, torch.tensor(1.0 / program[0].in_step), qmax,
                                    (pool.kernel_size, pool.stride, pool.padding))
        for n, block in enumerate(program):
            block_in, block_sums = codes, sums
            for layer in block.layers:
                codes, sums = ep.codes(*layer(codes, sums), qmax)
            if block.down is None:
                identity, id_scale = block_in, torch.tensor(block.in_step * block.out_mult)
            else:
                identity, id_scale = ep.floats(*block.down(block_in, block_sums)), torch.tensor(block.out_mult)
            t, coef, box = block.last(codes, sums)
            if n + 1 == len(program):
                return ep.floats_residual(t, coef, box, identity, id_scale)
            codes, sums = ep.codes_residual(t, coef, box, identity, id_scale, qmax)
        raise AssertionError("a ResNet has at least one block")

    @staticmethod
    def _run_float(x: Tensor, program: list[_FloatBlock]) -> Tensor:
        for block in program:
            x = block.act_in(x)
            out = x
            for conv, act in block.layers:
                out = act(conv(out))
            identity = x if block.down is None else block.down(x)
            x = torch.relu_(block.last(out).add_(identity))
        return x
