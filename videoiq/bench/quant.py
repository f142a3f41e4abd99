"""``videoiq bench quant``: what fake quantization costs a convolution, forward and backward.

The any-precision ResNet computes every quantized conv as: PACT on the input (clip and round to the
activation width), DoReFa on the master weight (tanh, normalise, round at the master width, truncate
to the active width, re-align the mean), then an ordinary float convolution. This measures that layer
against a plain ``nn.Conv2d`` of the same shape, forward plus backward, at each width, in one run.
"""
from __future__ import annotations

import torch
from torch import nn

from ..quant import PACT, QuantConv2d
from .common import isolated, median_seconds, peak_memory_mib, print_table, setting_line


def _case(kind: str, bits: int, channels: int, size: int, batch: int, kernel: int, device: str,
          repeat: int) -> tuple[float, float]:
    """Seconds per forward+backward and peak memory of one layer kind: ``conv``, ``weights`` (QuantConv2d
    only) or ``layer`` (PACT then QuantConv2d)."""
    torch.manual_seed(0)
    family = (32, 4, 2)
    pad = kernel // 2
    if kind == "conv":
        layer: nn.Module = nn.Conv2d(channels, channels, kernel, padding=pad, bias=False)
    else:
        conv = QuantConv2d(channels, channels, kernel, padding=pad, bias=False, bit_widths=family)
        conv.set_active_bits(bits)
        if kind == "weights":
            layer = conv
        else:
            act = PACT(family)
            act.set_active_bits(bits)
            layer = nn.Sequential(act, conv)
    layer = layer.to(device)
    x = torch.rand(batch, channels, size, size, device=device, requires_grad=True)  # post-ReLU: >= 0

    def step() -> None:
        layer(x).sum().backward()

    return median_seconds(step, device, warmup=2, repeat=repeat), peak_memory_mib(device)


def bench_quant(channels: int = 64, size: int = 56, batch: int = 16, kernel: int = 3, repeat: int = 10,
                threads: int = 0, device: str = "cpu") -> dict[str, dict[str, float]]:
    """Print and return the table of a plain conv and of the quantized layer at 32/4/2 bits:
    ``{layer: {"ms": ms per forward+backward, "vs_plain": time / the plain conv's, "peak_mib": peak memory}}``."""
    threads = threads or torch.get_num_threads()
    print("videoiq bench quant: one conv layer, forward + backward")
    print(f"  {channels}->{channels} channels, {kernel}x{kernel}, input {batch}x{channels}x{size}x{size}, "
          f"median of {repeat} after 2 warm-up")
    print(f"  {setting_line(device, threads)}")
    cases = [("plain nn.Conv2d", "conv", 32)]
    for bits in (32, 4, 2):
        cases += [(f"QuantConv2d {bits}-bit weights", "weights", bits),
                  (f"PACT + QuantConv2d {bits}-bit", "layer", bits)]
    results = {name: isolated(_case, kind, bits, channels, size, batch, kernel, device, repeat, threads=threads)
               for name, kind, bits in cases}
    base = results["plain nn.Conv2d"][0]
    table = {name: {"ms": 1000 * sec, "vs_plain": sec / base, "peak_mib": mem} for name, (sec, mem) in results.items()}
    print()
    rows = [[name, f"{r['ms']:.2f}", f"{r['vs_plain']:.2f}x", f"{r['peak_mib']:.0f}"] for name, r in table.items()]
    print_table(["layer", "ms fwd+bwd", "vs plain conv", "peak MiB"], rows)
    worst = max(r["vs_plain"] for name, r in table.items() if name.startswith("PACT"))
    print(f"\n  slowest quantized layer / plain conv: {worst:.2f}x")
    return table
