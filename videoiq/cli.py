"""The ``videoiq`` command line: stages and the pipeline, sweeps, prediction, data, configs, models, FLOPs
and benchmarks.

Every subcommand turns a bad input into one ``videoiq: error: ...`` line on stderr naming the file, key
or flag (exit code 2) instead of a traceback (:func:`videoiq.errors.run_guarded`).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .bench.commands import add_bench_commands
from .config import STAGES, ConfigError, default_config, dump_yaml, load_config, save_config


def _config_show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    print(dump_yaml(cfg, changes_only=args.changes), end="")
    if args.check_inputs:
        cfg.check_inputs(args.config)
    return 0


def _config_defaults(args: argparse.Namespace) -> int:
    print(dump_yaml(default_config(args.stage)), end="")
    return 0


def _config_legacy(args: argparse.Namespace) -> int:
    from .legacy import translate_legacy

    if args.file:
        with open(args.file, encoding="utf-8") as f:
            command: str | list[str] = f.read()
    else:
        command = args.flags
    if not command:
        raise ConfigError("give the original command after '--', or --file with the command in it")
    result = translate_legacy(command)
    text = "".join(f"# {n}\n" for n in result.notes) + dump_yaml(result.config, changes_only=not args.full)
    if args.out:
        save_config(result.config, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    print(text, end="")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models import list_models, model_kind

    for name in list_models(args.pattern):
        print(f"{name:28s} {model_kind(name)}")
    return 0


def _flops(args: argparse.Namespace) -> int:
    from .flops import cost_report

    print(cost_report(args.backbone, args.policy, frames=args.frames, size=args.size, classes=args.classes,
                      precisions=tuple(args.precisions), skips=tuple(args.skips), fp_action=args.fp_action,
                      policy_size=args.policy_size, policy_hidden=args.policy_hidden))
    return 0


def _data_build(args: argparse.Namespace) -> int:
    from .data.convert import build_from_options

    build_from_options(args.source, args)
    return 0


def _data_inspect(args: argparse.Namespace) -> int:
    from .data.inspect import contact_sheet, describe
    from .data.shards import open_split

    db = open_split(args.db)
    print(describe(db, top=args.top))
    if args.sheet:
        keys = contact_sheet(db, args.sheet, clips=args.clips, frames=args.frames)
        print(f"contact sheet of {len(keys)} clips x {args.frames} frames: {args.sheet}")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from .data.synthetic import SynthConfig, write_synthetic

    cfg = SynthConfig(num_classes=args.classes, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                      min_frames=args.min_frames, max_frames=args.max_frames, size=args.size, fps=args.fps,
                      shots=args.shots, mark_shots=args.mark_shots, max_blank=args.max_blank,
                      mark_level=args.mark_level, min_light=args.min_light, faint_below=args.faint_below,
                      seed=args.seed)
    for report in write_synthetic(args.out, cfg, source=args.source, workers=args.workers).values():
        print(report.summary())
    return 0


def _tune_report(args: argparse.Namespace) -> int:
    from .sweeps.report import build_report

    build_report(args.experiment, printer=print)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .predict import predict_main

    return predict_main(args)


def _infer(args: argparse.Namespace) -> int:
    from .ray.infer import infer_collection

    summary = infer_collection(args.checkpoint, args.input, args.out, engine=args.engine, device=args.device,
                               actors=args.actors, actor_cpus=args.actor_cpus, batch_size=args.batch_size,
                               flush_rows=args.part_size, wandb=args.wandb)
    return 1 if summary["errors"] else 0


def _add_predict_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify video files with a policy checkpoint (conditional execution)")
    p.add_argument("checkpoint", help="a policy-stage checkpoint file, or its run folder")
    p.add_argument("videos", nargs="+", help="video files (mp4, avi, webm, ...)")
    p.add_argument("--top", type=int, default=3, help="classes shown per video")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--sampled", action="store_true", help="Gumbel-sampled decisions instead of argmax")
    p.add_argument("--engine", choices=("float", "int8"), default="float",
                   help="int8: run the backbone's quantized widths on integer CPU kernels (faster at low bits)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--strip", metavar="PNG", help="also write a picture: each video's sampled frames with the "
                   "action taken on each")
    p.set_defaults(run=_predict)

    q = sub.add_parser("infer", help="classify a whole collection on Ray (Ray Data): Parquet rows and a summary")
    q.add_argument("checkpoint", help="a policy-stage checkpoint file, or its run folder")
    q.add_argument("--input", required=True, metavar="SRC", help="an LMDB or sharded split, a folder of videos, or "
                   "a list file of 'video [class id ...]' lines")
    q.add_argument("--out", required=True, metavar="DIR", help="the results folder (part-*.parquet, summary.json); "
                   "the same command again goes on with the videos not in it yet")
    q.add_argument("--engine", choices=("float", "int8"), default="float",
                   help="int8: run the backbone's quantized widths on integer CPU kernels")
    q.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per model actor)")
    q.add_argument("--actors", type=int, default=0, help="model actors (default: one per GPU, or 3/4 of the CPUs)")
    q.add_argument("--actor-cpus", type=float, default=1.0, help="CPUs (and torch threads) per model actor")
    q.add_argument("--batch-size", type=int, default=8, help="videos per model call")
    q.add_argument("--part-size", type=int, default=1000, help="videos per Parquet part file (a part is also "
                   "written every 30 s; a stopped run loses at most the videos not in a part yet)")
    q.add_argument("--wandb", choices=("auto", "online", "offline", "disabled"), default="disabled",
                   help="also send the summary, a table of videos and a decisions picture to wandb (auto: online "
                   "with WANDB_API_KEY, else offline)")
    q.set_defaults(run=_infer)


def _add_tune_commands(sub: argparse._SubParsersAction) -> None:
    from .launchers import add_sweep_arguments, run_sweep_command

    tune = sub.add_parser("tune", help="Ray Tune sweeps of the policy stage and their Pareto reports")
    tsub = tune.add_subparsers(dest="tune_command", required=True)
    run = tsub.add_parser("run", help="run (or continue) a sweep: the same as launch/tune.py")
    add_sweep_arguments(run)
    run.set_defaults(run=run_sweep_command)
    report = tsub.add_parser("report",
                             help="rebuild pareto.csv/json/png of a finished or interrupted sweep, print the table")
    report.add_argument("experiment", help="the experiment folder, <storage_path>/<name>")
    report.set_defaults(run=_tune_report)


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    from .data.codec import DEFAULT_MAX_LOSS

    data = sub.add_parser("data", help="convert videos or frame folders into LMDB, inspect, generate the demo set")
    dsub = data.add_subparsers(dest="data_command", required=True)
    build = dsub.add_parser("build", help="convert frame folders or video files into a videoiq LMDB (resumable)")
    bsub = build.add_subparsers(dest="source", required=True)
    sources = (("frames", "frame folders listed in a TSN list file"),
               ("videos", "video files (a list file, or class sub-folders) decoded with PyAV"),
               ("activitynet", "ActivityNet v1.3 videos from its JSON annotation file, decoded with PyAV"),
               ("kinetics", "Kinetics clips from its CSV annotation file, decoded with PyAV"))
    for source, text in sources:
        b = bsub.add_parser(source, help=text)
        b.add_argument("--out", required=True, help="the LMDB directory to write, e.g. data/train.lmdb")
        b.add_argument("--root", required=True, help={
            "frames": "folder the list's paths are relative to",
            "videos": "folder the list's paths are relative to (or with class sub-folders, when no --list)",
        }.get(source, "folder holding the video files, in any sub-folders (found by id)"))
        if source in ("frames", "videos"):
            b.add_argument("--list", required=source == "frames", help="list file, one video per line")
            b.add_argument("--sep", help="list-file field separator (default: the dataset's, else a space)")
        elif source == "activitynet":
            b.add_argument("--json", required=True, help="the annotation file, e.g. activity_net.v1-3.min.json")
            b.add_argument("--subset", required=True, choices=["training", "validation"])
            b.add_argument("--trim", action="store_true", help="one record per labelled segment, decoded over "
                           "that segment only (default: whole videos with all their labels)")
        else:
            b.add_argument("--csv", required=True, help="label,youtube_id,time_start,time_end[,split] with a header")
            b.add_argument("--subset", help="only rows whose split column is this (e.g. train, val)")
        b.add_argument("--dataset", default="custom",
                       help="a dataset name: sets separator/template defaults and checks the class count")
        b.add_argument("--split", default="", help="recorded in the metadata (train, val, ...; default: --subset)")
        b.add_argument("--classes", help="class names, one per line in label order (categories.txt)"
                       + ("" if source in ("frames", "videos") else "; default: the labels of the annotation file"))
        b.add_argument("--workers", type=int, default=2, help="conversion processes (default 2)")
        b.add_argument("--shards", type=int, default=0, help="write --out as a sharded split of this many LMDB "
                       "shards, built in parallel (default 0: one LMDB)")
        b.add_argument("--ray", action="store_true", help="build the shards as Ray tasks over the cluster of "
                       "RAY_ADDRESS (else a local Ray); --out and the inputs must be at one path on every node")
        b.add_argument("--strict", action="store_true", help="stop at the first bad input instead of skipping it")
        b.add_argument("--overwrite", action="store_true", help="delete an existing database at --out first")
        b.add_argument("--map-size-gib", type=float, default=1024, help="LMDB address space (sparse; default 1024)")
        if source == "frames":
            b.add_argument("--template", help="frame file name, formatted with the frame number "
                           "(default: the dataset's, e.g. '{:05d}.jpg')")
            b.add_argument("--layout", choices=["start_end", "count"], default="start_end",
                           help="start_end: 'folder start end label...' (the original's); "
                           "count: 'folder num_frames label...'")
            b.add_argument("--no-verify", action="store_true",
                           help="check JPEG headers only instead of decoding every frame")
        else:
            b.add_argument("--fps", type=float, default=0, help="frames per second to keep (0: every frame)")
            b.add_argument("--short-side", type=int, default=256, help="resize so the short side is this (0: keep)")
            b.add_argument("--quality", type=int, default=90, help="JPEG quality of the stored frames")
            b.add_argument("--max-loss", type=float, default=DEFAULT_MAX_LOSS,
                           help="share of a video's declared frames that may fail to decode before it is named "
                           f"in the summary (refused with --strict; default {DEFAULT_MAX_LOSS})")
        b.set_defaults(run=_data_build)

    inspect = dsub.add_parser("inspect", help="print a database's metadata, counts and class histogram")
    inspect.add_argument("db")
    inspect.add_argument("--sheet", help="also write a contact-sheet PNG of a few clips here")
    inspect.add_argument("--clips", type=int, default=4)
    inspect.add_argument("--frames", type=int, default=8)
    inspect.add_argument("--top", type=int, default=10, help="classes shown in the histogram")
    inspect.set_defaults(run=_data_inspect)

    from .data.synthetic import SynthConfig

    d = SynthConfig()
    synth = dsub.add_parser("synth", help="generate the demo set (colours, marks, blank frames) as videos, then "
                                          "convert it")
    synth.add_argument("out", help="output folder: videos, train.txt, val.txt, classes.txt, <split>.frame_kinds.json, "
                                   "train.lmdb, val.lmdb")
    synth.add_argument("--classes", type=int, default=d.num_classes)
    synth.add_argument("--train-per-class", type=int, default=d.train_per_class)
    synth.add_argument("--val-per-class", type=int, default=d.val_per_class)
    synth.add_argument("--min-frames", type=int, default=d.min_frames)
    synth.add_argument("--max-frames", type=int, default=d.max_frames)
    synth.add_argument("--size", type=int, default=d.size)
    synth.add_argument("--fps", type=int, default=d.fps)
    synth.add_argument("--shots", type=int, default=d.shots, help="shots per video, each of one frame kind")
    synth.add_argument("--mark-shots", type=int, default=d.mark_shots, help="close-up shots per video")
    synth.add_argument("--max-blank", type=float, default=d.max_blank, help="largest share of blank shots")
    synth.add_argument("--mark-level", type=float, default=d.mark_level,
                       help="grey levels of the brightest mark over its black close-up")
    synth.add_argument("--min-light", type=float, default=d.min_light,
                       help="the dimmest a video's marks are lit, as a share of --mark-level")
    synth.add_argument("--faint-below", type=float, default=d.faint_below,
                       help="marks lit under this share of --mark-level are the 'faint' kind")
    synth.add_argument("--seed", type=int, default=d.seed)
    synth.add_argument("--source", choices=["videos", "frames"], default="videos",
                       help="write mp4 files or JPEG folders")
    synth.add_argument("--workers", type=int, default=2)
    synth.set_defaults(run=_data_synth)


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    from .launchers import add_pipeline_arguments, add_stage_arguments, run_pipeline_command, run_stage_command

    run = sub.add_parser("run", help="run one stage from its config: in this process (ray.num_workers: 0) or on "
                         "Ray Train workers; re-running resumes it")
    add_stage_arguments(run)
    run.set_defaults(run=run_stage_command)
    pipeline = sub.add_parser("pipeline", help="run fp -> ap, policy_pretrain, policy and eval, handing the "
                              "checkpoints on, and print the result table")
    add_pipeline_arguments(pipeline)
    pipeline.set_defaults(run=run_pipeline_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videoiq", description="VideoIQ on Ray Train and Tune")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_commands(sub)

    config = sub.add_parser("config", help="show, check and translate stage configs")
    csub = config.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print a config with its overrides applied, validated")
    show.add_argument("config", help="stage YAML, e.g. launch/configs/ap_r50-b32-4-2_activitynet.yaml")
    show.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides, values in YAML")
    show.add_argument("--changes", action="store_true", help="print only values that differ from the stage defaults")
    show.add_argument("--check-inputs", action="store_true",
                      help="also fail if data/checkpoint paths are unset or missing")
    show.set_defaults(run=_config_show)
    defaults = csub.add_parser("defaults", help="print a stage's default config (the paper's values)")
    defaults.add_argument("stage", choices=list(STAGES))
    defaults.set_defaults(run=_config_defaults)
    legacy = csub.add_parser(
        "legacy", help="translate an original VideoIQ command line into a videoiq config",
        description="Example: videoiq config legacy -- python train_dist_ap.py --dataset activitynet ...",
    )
    legacy.add_argument("--file", help="read the command from this file (multi-line, with backslashes, is fine)")
    legacy.add_argument("--out", help="also write the full config to this YAML file")
    legacy.add_argument("--full", action="store_true",
                        help="print every value, not only those that differ from the defaults")
    legacy.add_argument("flags", nargs=argparse.REMAINDER, help="the original command, after --")
    legacy.set_defaults(run=_config_legacy)

    models = sub.add_parser("models", help="list the registered models")
    models.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'ap_*'")
    models.set_defaults(run=_models)

    flops = sub.add_parser("flops", help="GMACs per video of a backbone + policy, counted from the model graph")
    flops.add_argument("--backbone", default="ap_resnet50")
    flops.add_argument("--policy", default="policy_mobilenet_v2")
    flops.add_argument("--frames", type=int, default=16)
    flops.add_argument("--size", type=int, default=224)
    flops.add_argument("--classes", type=int, default=200)
    flops.add_argument("--precisions", type=int, nargs="+", default=[32, 4, 2])
    flops.add_argument("--skips", type=int, nargs="*", default=[1])
    flops.add_argument("--fp-action", action="store_true", help="offer the full-precision teacher as an action")
    flops.add_argument("--policy-size", type=int, default=0, help="the side the policy resizes frames to "
                       "(default: the policy model's own)")
    flops.add_argument("--policy-hidden", type=int, default=0, help="the policy's LSTM width (default: its own)")
    flops.set_defaults(run=_flops)
    _add_data_commands(sub)
    add_bench_commands(sub)
    _add_tune_commands(sub)
    _add_predict_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .logs import configure_logging

    configure_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "flags", None) and args.flags[0] == "--":
        args.flags = args.flags[1:]
    from .errors import run_guarded

    return run_guarded(lambda: args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
