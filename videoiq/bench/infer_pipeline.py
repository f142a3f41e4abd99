"""``videoiq bench infer --pipeline``: videos/s of the whole ``videoiq infer`` pipeline, decode included.

Each case is :func:`videoiq.ray.infer.infer_collection` (Ray Data: read + decode in CPU tasks, the model in an
actor pool, Parquet parts written by the driver) over the same generated videos:

* the dense full-precision model on every frame (``dense_fp``): the reference;
* VideoIQ by conditional execution on each engine (``float``, ``int8``), its decisions forced to a mix of
  :data:`videoiq.bench.infer.MIXES` so that GFLOPs are exact;
* with ``checkpoint``: that policy checkpoint on its own validation split with its own decisions, on each engine.

The VideoIQ model is random-init (the weights do not change the work), written as a policy-stage checkpoint by
:func:`random_policy_checkpoint` to a temporary folder, since the pipeline loads a checkpoint. The videos
(``frames`` frames each, the side the checkpoint's evaluation scales to) are generated once into ``folder`` as
mp4 files (:func:`videoiq.bench.scale.make_collection`) and converted into an LMDB split, both reused.

Start-up (the actors' processes, imports, model load, the int8 engine's first call) is paid again by every
``infer_collection`` call, since each is its own Ray Data execution. So each case runs twice into one output
folder: once over every video, then, after removing the last parts, again over only the videos those parts
held, which a re-run classifies again; the difference of the two is the warm rate. Both figures are reported.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from typing import Any

import torch

from ..config import DataSection, PolicyConfig, PolicySection, config_from_dict, config_to_dict
from ..data.build import videos_conversion, write_database
from ..data.clips import ClipSpec
from ..data.lists import parse_video_list
from ..errors import UsageError
from ..models import VideoIQ, create_model
from ..quant import bit_widths_of
from ..train.checkpoint import load_checkpoint, model_entry, save_checkpoint
from .common import print_table, setting_line
from .infer import MIXES, _actions, checked_cases
from .scale import make_collection

TEACHER = "dense fp"


def random_policy_checkpoint(path: str, backbone: str = "ap_resnet50", policy: str = "policy_mobilenet_v2",
                             frames: int = 8, size: int = 224, policy_size: int = 84, classes: int = 200,
                             seed: int = 0) -> str:
    """Write a random-init policy-stage checkpoint to ``path`` (what :func:`videoiq.predict.load_policy` reads):
    the ap ``backbone``, its full-precision twin as the teacher, the ``policy`` over the backbone's widths and a
    one-frame skip, for ``frames`` frames at ``size`` px (evaluation scales the short side to ``size / 0.875``
    and crops the centre). Returns ``path``."""
    torch.manual_seed(seed)
    cfg = PolicyConfig(data=DataSection(dataset="custom", num_frames=frames, input_size=size, scale_up=True),
                       policy=PolicySection(model=policy, skip_choices=(1,), input_size=policy_size))
    backbone_kwargs = {"num_classes": classes}
    model = create_model(backbone, **backbone_kwargs)
    family = bit_widths_of(model)
    if family is None:
        raise UsageError(f"--backbone: {backbone} is not an any-precision model (an ap_* name)")
    teacher_name = backbone.removeprefix("ap_")
    teacher = create_model(teacher_name, **backbone_kwargs)
    p = cfg.policy
    # the arguments the policy stage records for its policy (train/stages.py)
    policy_kwargs = {"num_precisions": len(family), "skip_choices": list(p.skip_choices), "hidden_size": p.hidden_size,
                     "input_size": p.input_size, "dropout": p.dropout,
                     "num_classes": classes if p.aux_classifier else None, "temperature": p.temperature_init}
    net = create_model(policy, **policy_kwargs)
    videoiq = VideoIQ(model, net, teacher=teacher)  # checks that the three fit together
    save_checkpoint(path, {
        "stage": "policy", "epoch": 0, "config": config_to_dict(cfg),
        "models": {"model": model_entry(backbone, backbone_kwargs, model),
                   "teacher": model_entry(teacher_name, backbone_kwargs, teacher),
                   "policy": model_entry(policy, policy_kwargs, net)},
        "extra": {"classes": [f"c{i}" for i in range(classes)], "precisions": list(videoiq.precisions),
                  "actions": list(videoiq.actions)}})
    return path


def bench_videos(folder: str, videos: int, frames: int, side: int, classes: int, workers: int) -> str:
    """The LMDB split of ``videos`` generated videos of ``frames`` frames at ``side`` x ``side`` px, labelled
    round-robin over ``classes`` classes named as :func:`random_policy_checkpoint` names them, in ``folder``
    (the videos and the split reused when there); its path."""
    listing = make_collection(os.path.join(folder, "videos"), videos, frames, side, workers)
    items = parse_video_list(listing, os.path.dirname(listing))[:videos]
    items = [dataclasses.replace(it, labels=(i % classes,)) for i, it in enumerate(items)]
    split = os.path.join(folder, f"split_{videos}x{frames}x{side}_{classes}c.lmdb")
    # a finished build of the same list is kept (write_database only checks it); a cut-short one resumes
    write_database(split, items, [f"c{i}" for i in range(classes)], videos_conversion(short_side=0), workers=workers)
    return split


def _rerun_last(out: str, videos: int) -> None:
    """Remove the newest parts of ``out`` until at least ``videos`` rows are gone: a re-run classifies those
    again (how many, its ``this_run`` says)."""
    import pyarrow.parquet as pq

    from ..infer import part_files

    removed = 0
    for part in reversed(part_files(out)):
        if removed >= videos:
            break
        removed += pq.read_metadata(part).num_rows
        os.remove(part)


def _measure(checkpoint: str, source: str, out: str, short: int, run: dict[str, Any], **case: Any) -> dict[str, Any]:
    """One case: every video of ``source``, then the last ``short`` again; the rates and the summary."""
    from ..ray.infer import infer_collection

    def once() -> dict[str, Any]:
        return infer_collection(checkpoint, source, out, printer=lambda _: None, flush_rows=short, **run, **case)

    whole = once()
    _rerun_last(out, short)
    again = once()
    a, b = whole["this_run"], again["this_run"]
    extra_videos, extra_s = a["videos"] - b["videos"], a["seconds"] - b["seconds"]
    warm = extra_videos / extra_s if extra_videos > 0 and extra_s > 0 else math.nan
    return {"summary": again, "first": a, "warm": warm, "start_s": b["seconds"] - b["videos"] / warm,
            # the warm rate rests on less time than start-up takes: start-up's noise can move it much
            "thin": not extra_s > b["seconds"]}


def bench_infer_pipeline(backbone: str = "ap_resnet50", policy: str = "policy_mobilenet_v2", frames: int = 8,
                         size: int = 224, policy_size: int = 84, batch: int = 4, classes: int = 200,
                         videos: int = 96, folder: str = "runs/bench_infer", checkpoint: str = "", actors: int = 1,
                         threads: int = 2, ray_cpus: int = 0, device: str = "cpu", mixes: tuple[str, ...] = ("even",),
                         engines: tuple[str, ...] | None = None) -> dict[str, dict[str, float | None]]:
    """Print and return the pipeline table (see the module docstring), one row per case with the printed
    columns: ``videos_per_s`` (warm), ``videos_per_s_per_core``, ``videos_per_s_first`` (the first run's, start-up
    included), ``start_s``, ``time_vs_fp``, ``gflops_paper``, ``gflops_run``, ``model_busy`` (``None`` where the
    table has no figure) and ``videos``, keyed ``"dense fp"``, the mix name (``"even"``), ``"checkpoint"``, each
    followed by ``" int8"`` on the integer engine.

    ``actors`` model actors of ``threads`` torch threads (and as many Ray CPUs) each take batches of ``batch``
    videos; without ``RAY_ADDRESS`` a local Ray of ``ray_cpus`` logical CPUs (0: the actors' CPUs and one for
    decoding, at least this machine's cores) is started. ``checkpoint`` runs on all of its validation split."""
    import ray

    from ..ray.infer import infer_collection
    from ..ray.train import connect

    engines = checked_cases(mixes, engines, device, frames)
    if actors < 1 or threads < 1:
        raise UsageError(f"--actors and --threads: expected >= 1 with --pipeline, got {actors} and {threads}")
    short = actors * batch  # the re-run: a batch for each actor
    if videos < 2 * short:
        raise UsageError(f"--videos: expected at least {2 * short} (twice --actors x --batch: the re-run that "
                         f"prices start-up takes {short}), got {videos}")
    own = _own_split(checkpoint) if checkpoint else ""
    cores = len(os.sched_getaffinity(0))
    run = {"device": device, "actors": actors, "actor_cpus": float(threads), "batch_size": batch}
    cases: list[tuple[str, str, dict[str, Any]]] = []  # (table key, printed label, measured)
    with tempfile.TemporaryDirectory(prefix="videoiq-bench-") as work:
        model = random_policy_checkpoint(os.path.join(work, "policy.pt"), backbone, policy, frames, size, policy_size,
                                         classes)
        ckpt = load_checkpoint(model, mmap=True)
        actions = tuple(ckpt["extra"]["actions"])
        forced = {mix: [actions[a] for a in _actions(MIXES[mix][1], actions, 1, frames)[0].tolist()]
                  for mix in mixes}
        # frames of the side evaluation scales to (even, for the encoder), so a clip is their centre crop
        scale = ClipSpec.from_config(config_from_dict(ckpt["config"]).data, train=False).scale_size
        side = scale + scale % 2
        source = bench_videos(folder, videos, frames, side, classes, cores)
        started = not ray.is_initialized()
        if started:
            connect(min_cpus=ray_cpus or actors * threads + 1, printer=lambda _: None)
        try:
            cluster = int(ray.cluster_resources().get("CPU", 0))
            # logical CPUs beyond the machine's cores are not cores: a local Ray's per core is per real core
            per_core = cluster if os.environ.get("RAY_ADDRESS") else min(cluster, cores)
            print("videoiq bench infer --pipeline: the whole videoiq infer pipeline (Ray Data read + decode -> model "
                  "actors -> Parquet) on the same videos")
            print(f"  {videos} videos x {frames} frames of {side}x{side} px ({source}), centre crop {size}x{size}; "
                  f"{backbone} (dense fp: {backbone.removeprefix('ap_')}), {policy} at {policy_size}x{policy_size}, "
                  f"{classes} classes, random init")
            print(f"  {actors} model actor(s) x {threads} torch threads (Ray CPUs), batches of {batch} videos, on a "
                  f"Ray cluster of {cluster} logical CPUs (the rest decode) on {cores} cores; per core: / {per_core}")
            print(f"  each case twice: all its videos, then its last {short} again; videos/s = the difference in "
                  "videos / the difference in seconds, start-up excluded")
            print(f"  {setting_line(device, threads)}; load average {os.getloadavg()[0]:.2f} at the start")

            # Ray Data's first execution in a fresh cluster also starts its task workers: on a few of the videos
            # first, so that it does not weigh on the first case's long run (and not on its re-run)
            warmup = infer_collection(model, bench_videos(folder, short, frames, side, classes, cores),
                                      os.path.join(work, "warm-up"), printer=lambda _: None, dense_fp=True, **run)
            print(f"  warm-up: the dense fp model on {short} videos, {warmup['this_run']['seconds']:.1f} s")

            def measure(key: str, label: str, path: str, src: str, **case: Any) -> None:
                print(f"  measuring {label} ...", flush=True)
                cases.append((key, label, _measure(path, src, os.path.join(work, key), short, run, **case)))

            measure(TEACHER, TEACHER, model, source, dense_fp=True)
            for engine in engines:
                tail = ", int8" if engine == "int8" else ""
                for mix in mixes:
                    measure(mix + tail.replace(",", ""), MIXES[mix][0] + tail, model, source, engine=engine,
                            forced=forced[mix])
            for engine in engines if checkpoint else ():
                tail = ", int8" if engine == "int8" else ""
                measure("checkpoint" + tail.replace(",", ""), f"{checkpoint}, its decisions" + tail, checkpoint, own,
                        engine=engine)
        finally:
            if started:
                ray.shutdown()
    table = _table(cases, per_core)
    print()
    print_table(["case", "videos/s", "per core", "1st run v/s", "start-up s", "time vs fp", "GFLOPs (paper)",
                 "GFLOPs (run)", "model busy %"], [_row(label, table[key]) for key, label, _ in cases])
    print()
    _print_ratios(table, cases, engines, mixes)
    return table


def _own_split(checkpoint: str) -> str:
    """The validation split a policy checkpoint was trained with (its config's), which must be here."""
    ckpt = load_checkpoint(checkpoint, stages=("policy",), what="--checkpoint", mmap=True)
    data = config_from_dict(ckpt["config"], checkpoint, warn_renamed=False).data
    split = data.lmdb_path(data.val_split)
    if not os.path.isdir(split):
        raise UsageError(f"--checkpoint: {checkpoint} was trained on {data.root}, whose validation split {split} "
                         "is not here")
    return split


def _table(cases: list[tuple[str, str, dict[str, Any]]], per_core: int) -> dict[str, dict[str, float | None]]:
    fp = next(r for key, _, r in cases if key == TEACHER)["warm"]
    table: dict[str, dict[str, float | None]] = {}
    for key, _, r in cases:
        s, first = r["summary"], r["first"]
        mine = not key.startswith("checkpoint")  # the checkpoint has other videos and another model
        table[key] = {"videos_per_s": r["warm"], "videos_per_s_per_core": r["warm"] / per_core,
                      "videos_per_s_first": first["videos_per_s"], "start_s": r["start_s"],
                      "time_vs_fp": fp / r["warm"] if mine else None, "gflops_paper": s.get("gflops_per_video"),
                      "gflops_run": s.get("gflops_frames_run_per_video"), "model_busy": first["model_busy"],
                      "videos": first["videos"]}
    return table


def _row(name: str, r: dict[str, float | None]) -> list[str]:
    """One printed row: a blank where the table has no figure."""
    def cell(key: str, fmt: str, scale: float = 1.0) -> str:
        return "" if r[key] is None else format(scale * r[key], fmt)

    return [name, cell("videos_per_s", ".2f"), cell("videos_per_s_per_core", ".3f"),
            cell("videos_per_s_first", ".2f"), cell("start_s", ".1f"), cell("time_vs_fp", ".2f"),
            cell("gflops_paper", ".3f"), cell("gflops_run", ".3f"), cell("model_busy", ".0f", 100.0)]


def _print_ratios(table: dict[str, dict[str, float | None]], cases: list[tuple[str, str, dict[str, Any]]],
                  engines: tuple[str, ...], mixes: tuple[str, ...]) -> None:
    """Each VideoIQ row's videos/s over the dense fp model's (the policy runs in the forced rows too); the
    checkpoint's int8 over float; the rows whose warm figure is fragile."""
    fp = table[TEACHER]
    for mix in mixes:
        for engine in engines:
            r = table[mix + (" int8" if engine == "int8" else "")]
            print(f"  {engine} engine, {MIXES[mix][0]} / dense fp: {r['videos_per_s'] / fp['videos_per_s']:.2f}x "
                  f"the videos/s ({r['videos_per_s_per_core']:.3f} vs {fp['videos_per_s_per_core']:.3f} per core)")
    if "checkpoint" in table and "checkpoint int8" in table:
        fast, slow = table["checkpoint int8"], table["checkpoint"]
        print(f"  checkpoint, int8 / float videos/s: {fast['videos_per_s'] / slow['videos_per_s']:.2f}x warm, "
              f"{fast['videos_per_s_first'] / slow['videos_per_s_first']:.2f}x in the first runs (start-up included)")
    thin = [label for _, label, r in cases if r["thin"]]
    if thin:
        print(f"  fragile, its extra videos took less time than start-up (more videos steady it: --videos, or a larger "
              f"split for a checkpoint): {', '.join(thin)}")
