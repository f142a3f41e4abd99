"""``videoiq bench infer``: how much of the GFLOPs a policy saves turns into wall time.

Measured in one run on the same random videos (randomly initialised models: the weights do not
change the work):

* the dense full-precision model (the fp twin of the backbone) on every frame: the reference;
* the dense all-precision path, :meth:`VideoIQ.forward` (the original's inference: every precision
  on every frame, then masked);
* conditional execution, :meth:`VideoIQ.infer`, with the policy run and its decisions replaced by a
  fixed share of frames at each action (a "mix"), so each row's GFLOPs are known exactly.

For each mix: ms per video, GFLOPs per video (paper convention, and frames-run: the full-precision
stem and fc charged only for frames that run), the wall-time ratio to the dense fp model, and the
share of the frames-run GFLOPs saving that shows up as wall time. With fake quantization (float
kernels at every width), a lower width costs a CPU or GPU as much time as 32 bits; skipped frames
are the saving that is real on this hardware.
"""
from __future__ import annotations

from typing import Any

import torch

from ..flops import video_cost
from ..models import VideoIQ, create_model
from .common import isolated, median_seconds, peak_memory_mib, print_table, setting_line

MIXES: dict[str, tuple[str, dict[str, float]]] = {  # --mixes name -> (row label, share of frames per action)
    "32": ("all 32-bit", {"32bit": 1.0}),
    "4": ("all 4-bit", {"4bit": 1.0}),
    "2": ("all 2-bit", {"2bit": 1.0}),
    "skip25": ("25% skipped, rest 32-bit", {"32bit": 0.75, "skip1": 0.25}),
    "skip50": ("50% skipped, rest 32-bit", {"32bit": 0.5, "skip1": 0.5}),
    "skip75": ("75% skipped, rest 32-bit", {"32bit": 0.25, "skip1": 0.75}),
    "even": ("even mix 32/4/2/skip", {"32bit": 0.25, "4bit": 0.25, "2bit": 0.25, "skip1": 0.25}),
}


def _model(cfg: dict[str, Any]) -> VideoIQ:
    torch.manual_seed(0)
    backbone = create_model(cfg["backbone"], num_classes=cfg["classes"])
    teacher = create_model(cfg["backbone"].removeprefix("ap_"), num_classes=cfg["classes"])
    policy = create_model(cfg["policy"], num_precisions=3, skip_choices=[1], input_size=cfg["policy_size"])
    return VideoIQ(backbone, policy, teacher=teacher).eval()


def _actions(mix: dict[str, float], actions: tuple[str, ...], batch: int, frames: int) -> torch.Tensor:
    """``(B, T)`` action indices with exactly the mix's share of each video's frames, spread out."""
    per_video = []
    for action, share in mix.items():
        per_video += [actions.index(action)] * round(share * frames)
    per_video = (per_video + per_video[-1:] * frames)[:frames]
    order = torch.randperm(frames, generator=torch.Generator().manual_seed(0))
    return torch.tensor(per_video)[order].repeat(batch, 1)


def _case(name: str, cfg: dict[str, Any]) -> tuple[float, float]:
    """Seconds per batch and peak memory of one case (in its own process)."""
    device = cfg["device"]
    model = _model(cfg).to(device)
    video = torch.randn(cfg["batch"], cfg["frames"], 3, cfg["size"], cfg["size"],
                        generator=torch.Generator().manual_seed(1)).to(device)
    if name == "dense fp":
        run = lambda: model.teacher(video)  # noqa: E731
    elif name == "dense all-precision":
        run = lambda: model(video)  # noqa: E731
    elif name == "policy only":
        run = lambda: model.policy(video)  # noqa: E731
    else:
        forced = _actions(MIXES[name][1], model.actions, cfg["batch"], cfg["frames"]).to(device)

        def run() -> None:
            model.policy(video)  # the decisions it would take cost the same; the forced ones price exactly
            model.infer(video, forced_actions=forced)
    with torch.no_grad():
        seconds = median_seconds(run, device, warmup=1, repeat=cfg["repeat"])
    return seconds, peak_memory_mib(device)


def bench_infer(backbone: str = "ap_resnet50", policy: str = "policy_mobilenet_v2", frames: int = 16,
                size: int = 112, policy_size: int = 84, batch: int = 4, classes: int = 200, repeat: int = 3,
                threads: int = 0, device: str = "cpu",
                mixes: tuple[str, ...] = tuple(MIXES)) -> dict[str, dict[str, float | None]]:
    """Print and return the table of the dense paths and of conditional execution at each mix, one row per case
    (``"dense fp"``, ``"dense all-precision"``, ``"policy only"`` and the ``mixes`` names) with the printed
    columns: ``ms_per_video``, ``time_vs_fp``, ``gflops_paper``, ``gflops_run``, ``gflops_vs_fp``,
    ``saving_realized`` and ``peak_mib`` (``None`` where the table has no figure)."""
    threads = threads or torch.get_num_threads()
    unknown = [m for m in mixes if m not in MIXES]
    if unknown:
        raise ValueError(f"--mixes: unknown {unknown}; known: {', '.join(MIXES)}")
    cfg = {"backbone": backbone, "policy": policy, "frames": frames, "size": size, "policy_size": policy_size,
           "batch": batch, "classes": classes, "repeat": repeat, "device": device}
    model = _model(cfg)
    cost = video_cost(model.backbone, model.policy, num_frames=frames, input_size=size)
    print("videoiq bench infer: conditional execution vs the dense paths, no gradients, eval mode")
    print(f"  backbone {backbone} (dense fp: {backbone.removeprefix('ap_')}), policy {policy} at "
          f"{policy_size}x{policy_size}, {classes} classes; batch {batch} videos x {frames} frames at {size}x{size}; "
          f"median of {repeat} after 1 warm-up")
    print(f"  {setting_line(device, threads)}")
    names = ["dense fp", "dense all-precision", "policy only", *mixes]
    results = {name: isolated(_case, name, cfg, threads=threads) for name in names}
    fp_sec = results["dense fp"][0]
    fp_gmacs = cost.gmacs({"32bit": 1.0}, with_policy=False).total
    policy_gmacs = (cost.policy_cnn_macs + cost.policy_rnn_macs) / 1e9
    # what the dense path runs: the policy, the teacher, and the student's stem once and stages per width
    all_prec = policy_gmacs + (2 * cost.fp_macs + (1 + len(model.precisions)) * cost.quantized_macs) / 1e9
    table: dict[str, dict[str, float | None]] = {}
    for name in names:
        sec, mem = results[name]
        paper, realized = None, None
        if name in MIXES:
            mix = MIXES[name][1]
            paper, run = cost.gmacs(mix).total, cost.gmacs(mix, charge_skipped=False).total
            realized = (1 - sec / fp_sec) / (1 - run / fp_gmacs) if run < fp_gmacs else float("nan")
        elif name == "dense fp":
            paper = run = fp_gmacs
        elif name == "dense all-precision":
            run = all_prec
        else:
            run = policy_gmacs
        table[name] = {"ms_per_video": 1000 * sec / batch, "time_vs_fp": sec / fp_sec, "gflops_paper": paper,
                       "gflops_run": run, "gflops_vs_fp": run / fp_gmacs, "saving_realized": realized,
                       "peak_mib": mem}
    print()
    print_table(["case", "ms/video", "time vs fp", "GFLOPs (paper)", "GFLOPs (run)", "GFLOPs vs fp",
                 "saving realized", "peak MiB"], [_row(name, r) for name, r in table.items()])
    print()
    for share in (25, 50, 75):
        if "32" in results and f"skip{share}" in results:
            cut = 1 - results[f"skip{share}"][0] / results["32"][0]
            print(f"  skipping {share}% of frames cuts time by {100 * cut:.0f}% vs all 32-bit")
    return table


def _row(name: str, r: dict[str, float | None]) -> list[str]:
    """One printed row: a blank where the table has no figure."""
    def cell(key: str, fmt: str) -> str:
        return "" if r[key] is None else format(r[key], fmt)

    return [MIXES[name][0] if name in MIXES else name, cell("ms_per_video", ".1f"), cell("time_vs_fp", ".2f"),
            cell("gflops_paper", ".3f"), cell("gflops_run", ".3f"), cell("gflops_vs_fp", ".2f"),
            cell("saving_realized", ".2f"), cell("peak_mib", ".0f")]
