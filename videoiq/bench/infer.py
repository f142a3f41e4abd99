"""``videoiq bench infer``: how much of the GFLOPs a policy saves turns into wall time.

Measured in one run on the same random videos (randomly initialised models: the weights do not
change the work):

* the dense full-precision model (the fp twin of the backbone) on every frame: the reference;
* the dense all-precision path, :meth:`VideoIQ.forward` (the original's inference: every precision
  on every frame, then masked);
* the backbone alone with every frame at one width (the ratio of a low-bit frame to a 32-bit frame);
* conditional execution, :meth:`VideoIQ.infer`, with the policy run and its decisions replaced by a
  fixed share of frames at each action (a "mix"), so each row's GFLOPs are known exactly.

The backbone rows and the mixes run on each engine: ``float`` (fake quantization, float kernels at every
width) and ``int8`` (:mod:`videoiq.models.int8`: widths up to 7 bits on integer kernels).

For each mix: ms per video, GFLOPs per video (paper convention, and frames-run: the full-precision
stem and fc charged only for frames that run), the wall-time ratio to the dense fp model, and the
share of the frames-run GFLOPs saving that shows up as wall time. On the float engine a lower width
costs as much time as 32 bits and only skipped frames save time; the int8 engine turns low widths into
saved time too.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import UsageError
from ..flops import video_cost
from ..models import VideoIQ, create_model
from ..models.int8 import check_engine, int8_unavailable_reason
from ..quant import bit_width
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


def checked_cases(mixes: tuple[str, ...], engines: tuple[str, ...] | None, device: str,
                  frames: int) -> tuple[str, ...]:
    """The engines to measure (default: float, and int8 where it can run on ``device``), once ``mixes`` are known
    names that ``frames`` frames can hold and every engine can run there."""
    unknown = [m for m in mixes if m not in MIXES]
    if unknown:
        raise UsageError(f"--mixes: unknown {unknown}; known: {', '.join(MIXES)}")
    for m in mixes:  # here, not in a case's own process, where it would surface as the case failing
        _actions(MIXES[m][1], tuple(MIXES[m][1]), 1, frames)
    if engines is None:
        engines = ("float",) + (() if int8_unavailable_reason(device) else ("int8",))
    for engine in engines:
        check_engine(engine, device)
    return engines


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
    if not per_video:
        raise UsageError(f"--frames {frames}: too few frames for the shares of the mix {mix}")
    per_video = (per_video + per_video[-1:] * frames)[:frames]
    order = torch.randperm(frames, generator=torch.Generator().manual_seed(0))
    return torch.tensor(per_video)[order].repeat(batch, 1)


def _case(case: tuple[str, str, str], cfg: dict[str, Any]) -> tuple[float, float]:
    """Seconds per batch and peak memory of one case ``(kind, engine, mix or width)`` (in its own process)."""
    kind, engine, what = case
    device = cfg["device"]
    model = _model(cfg).to(device)
    video = torch.randn(cfg["batch"], cfg["frames"], 3, cfg["size"], cfg["size"],
                        generator=torch.Generator().manual_seed(1)).to(device)
    if kind == "dense fp":
        run = lambda: model.teacher(video)  # noqa: E731
    elif kind == "dense all-precision":
        run = lambda: model(video)  # noqa: E731
    elif kind == "policy only":
        run = lambda: model.policy(video)  # noqa: E731
    elif kind == "frames":  # the backbone alone at one width on every frame
        frames, bits = video.flatten(0, 1), int(what)
        if engine == "int8":
            integer = model.int8_backbone()
            run = lambda: integer.frame_features(frames, bits)  # noqa: E731
        else:
            def run() -> None:
                with bit_width(model.backbone, bits):
                    model.backbone.frame_features(frames)
    else:
        forced = _actions(MIXES[what][1], model.actions, cfg["batch"], cfg["frames"]).to(device)

        def run() -> None:
            model.policy(video)  # the decisions it would take cost the same; the forced ones price exactly
            model.infer(video, forced_actions=forced, engine=engine)
    with torch.no_grad():
        if engine == "int8":  # pack the weights and build the kernels before timing (what loading a model does)
            run()
        seconds = median_seconds(run, device, warmup=1, repeat=cfg["repeat"])
    return seconds, peak_memory_mib(device)


def _key(case: tuple[str, str, str]) -> str:
    """The returned table's key of a case: ``"dense fp"``, a mix name (``"skip50"``), ``"frames 4"``, each
    followed by ``" int8"`` on the integer engine."""
    kind, engine, what = case
    key = what if kind == "videoiq" else f"frames {what}" if kind == "frames" else kind
    return key + (" int8" if engine == "int8" else "")


def _label(case: tuple[str, str, str]) -> str:
    kind, engine, what = case
    if kind == "frames":
        text = f"backbone, {what}-bit frames"
    elif kind == "videoiq":
        text = MIXES[what][0]
    else:
        return kind
    return text + (", int8" if engine == "int8" else "")


def bench_infer(backbone: str = "ap_resnet50", policy: str = "policy_mobilenet_v2", frames: int = 16,
                size: int = 112, policy_size: int = 84, batch: int = 4, classes: int = 200, repeat: int = 3,
                threads: int = 0, device: str = "cpu", mixes: tuple[str, ...] = tuple(MIXES),
                engines: tuple[str, ...] | None = None) -> dict[str, dict[str, float | None]]:
    """Print and return the table of the dense paths, the backbone alone at each width and conditional execution at
    each mix, for each engine (default: float, and int8 where it can run), one row per case with the printed
    columns: ``ms_per_video``, ``time_vs_fp``, ``gflops_paper``, ``gflops_run``, ``gflops_vs_fp``,
    ``saving_realized`` and ``peak_mib`` (``None`` where the table has no figure), keyed as :func:`_key` says."""
    threads = threads or torch.get_num_threads()
    engines = checked_cases(mixes, engines, device, frames)
    cfg = {"backbone": backbone, "policy": policy, "frames": frames, "size": size, "policy_size": policy_size,
           "batch": batch, "classes": classes, "repeat": repeat, "device": device}
    model = _model(cfg)
    cost = video_cost(model.backbone, model.policy, num_frames=frames, input_size=size)
    print("videoiq bench infer: conditional execution vs the dense paths, no gradients, eval mode")
    print(f"  backbone {backbone} (dense fp: {backbone.removeprefix('ap_')}), policy {policy} at "
          f"{policy_size}x{policy_size}, {classes} classes; batch {batch} videos x {frames} frames at {size}x{size}; "
          f"median of {repeat} after 1 warm-up; engines: {', '.join(engines)}")
    print(f"  {setting_line(device, threads)}")
    widths = [w for w in model.precisions if f"{w}bit" in {a for m in mixes for a in MIXES[m][1]}] or [32]
    cases = [("dense fp", "float", ""), ("dense all-precision", "float", ""), ("policy only", "float", "")]
    cases += [("frames", e, str(w)) for e in engines for w in widths]
    cases += [("videoiq", e, m) for e in engines for m in mixes]
    results = {case: isolated(_case, case, cfg, threads=threads) for case in cases}
    fp_sec = results[cases[0]][0]
    fp_gmacs = cost.gmacs({"32bit": 1.0}, with_policy=False).total
    policy_gmacs = (cost.policy_cnn_macs + cost.policy_rnn_macs) / 1e9
    # what the dense path runs: the policy, the teacher, and the student's stem once and stages per width
    all_prec = policy_gmacs + (2 * cost.fp_macs + (1 + len(model.precisions)) * cost.quantized_macs) / 1e9
    table: dict[str, dict[str, float | None]] = {}
    for case in cases:
        (sec, mem), (kind, _, what) = results[case], case
        paper, realized = None, None
        if kind == "videoiq":
            mix = MIXES[what][1]
            paper, run = cost.gmacs(mix).total, cost.gmacs(mix, charge_skipped=False).total
            realized = (1 - sec / fp_sec) / (1 - run / fp_gmacs) if run < fp_gmacs else float("nan")
        elif kind == "frames":
            paper = run = cost.gmacs({f"{what}bit": 1.0}, with_policy=False).total
        elif kind == "dense fp":
            paper = run = fp_gmacs
        elif kind == "dense all-precision":
            run = all_prec
        else:
            run = policy_gmacs
        table[_key(case)] = {"ms_per_video": 1000 * sec / batch, "time_vs_fp": sec / fp_sec, "gflops_paper": paper,
                             "gflops_run": run, "gflops_vs_fp": run / fp_gmacs, "saving_realized": realized,
                             "peak_mib": mem}
    print()
    print_table(["case", "ms/video", "time vs fp", "GFLOPs (paper)", "GFLOPs (run)", "GFLOPs vs fp",
                 "saving realized", "peak MiB"], [_row(_label(case), table[_key(case)]) for case in cases])
    print()
    _print_ratios({case: sec for case, (sec, _) in results.items()}, table, engines, widths, mixes, fp_sec)
    return table


def _print_ratios(seconds: dict[tuple[str, str, str], float], table: dict[str, dict[str, float | None]],
                  engines: tuple[str, ...], widths: list[int], mixes: tuple[str, ...], fp_sec: float) -> None:
    """The ratios under the table: what skipping saves, a low-bit frame vs a top-width one, the top width vs the
    dense fp model, and each mix's wall-time saving beside its GFLOPs saving."""
    for share in (25, 50, 75):
        whole, part = ("videoiq", "float", "32"), ("videoiq", "float", f"skip{share}")
        if whole in seconds and part in seconds:
            print(f"  skipping {share}% of frames cuts time by {100 * (1 - seconds[part] / seconds[whole]):.0f}% "
                  "vs all 32-bit")
    for engine in engines:
        top = seconds.get(("frames", engine, str(widths[0])))
        if top is not None:
            low = [f"{w} bits {seconds[('frames', engine, str(w))] / top:.2f}x" for w in widths[1:]]
            if low:
                print(f"  {engine} engine, a frame vs a {widths[0]}-bit frame (backbone only): {', '.join(low)}")
            print(f"  {engine} engine, the ap backbone at {widths[0]} bits vs the dense fp model: {top / fp_sec:.2f}x")
        for mix in mixes:
            r = table[_key(("videoiq", engine, mix))]
            if MIXES[mix][1] != {"32bit": 1.0}:
                print(f"  {engine} engine, {MIXES[mix][0]}: {r['time_vs_fp']:.2f}x the dense fp time at "
                      f"{r['gflops_vs_fp']:.2f}x its GFLOPs; the wall-time saving is {100 * r['saving_realized']:.0f}% "
                      "of the GFLOPs saving")


def _row(name: str, r: dict[str, float | None]) -> list[str]:
    """One printed row: a blank where the table has no figure."""
    def cell(key: str, fmt: str) -> str:
        return "" if r[key] is None else format(r[key], fmt)

    return [name, cell("ms_per_video", ".1f"), cell("time_vs_fp", ".2f"),
            cell("gflops_paper", ".3f"), cell("gflops_run", ".3f"), cell("gflops_vs_fp", ".2f"),
            cell("saving_realized", ".2f"), cell("peak_mib", ".0f")]
