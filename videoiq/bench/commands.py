"""The ``videoiq bench`` subcommands: their arguments, and the calls into the benchmark modules (imported
when a benchmark runs, since some need Ray)."""
from __future__ import annotations

import argparse


def _bench_data(args: argparse.Namespace) -> int:
    from .data import bench_data

    bench_data(args.db, videos=args.videos, frames=args.frames, size=args.size, batch_size=args.batch_size,
               workers=args.workers, decoder=args.decoder, train=not args.eval, epochs=args.epochs)
    return 0


def _bench_quant(args: argparse.Namespace) -> int:
    from .quant import bench_quant

    bench_quant(args.channels, args.size, args.batch, args.kernel, args.repeat, args.threads, args.device)
    return 0


def _bench_train(args: argparse.Namespace) -> int:
    from .train import bench_train

    bench_train(args.backbone, args.policy, args.frames, args.size, args.batch, args.steps, args.classes, args.threads,
                args.device, tuple(args.ray_workers), args.amp, args.channels_last, args.storage)
    return 0


PIPELINE_ONLY = ("videos", "folder", "checkpoint", "actors", "ray_cpus")  # bench infer's --pipeline options


def _bench_infer(args: argparse.Namespace) -> int:
    from ..errors import UsageError

    engines = tuple(args.engines) if args.engines else None
    if args.pipeline:
        from .infer_pipeline import bench_infer_pipeline

        if args.repeat is not None:
            raise UsageError("--repeat: not used with --pipeline (each case runs its videos twice; see --videos)")
        given = {name: getattr(args, name) for name in ("frames", "size", *PIPELINE_ONLY)}
        if args.threads:
            given["threads"] = args.threads
        if args.mixes:
            given["mixes"] = tuple(args.mixes)
        # options left out keep bench_infer_pipeline's defaults (ResNet-50's 8 frames at 224x224, one actor)
        bench_infer_pipeline(args.backbone, args.policy, policy_size=args.policy_size, batch=args.batch,
                             classes=args.classes, device=args.device, engines=engines,
                             **{k: v for k, v in given.items() if v is not None})
        return 0
    from .infer import MIXES, bench_infer

    only = [f"--{name.replace('_', '-')}" for name in PIPELINE_ONLY if getattr(args, name) is not None]
    if only:
        raise UsageError(f"{', '.join(only)}: only with --pipeline")
    bench_infer(args.backbone, args.policy, 16 if args.frames is None else args.frames,
                112 if args.size is None else args.size, args.policy_size, args.batch, args.classes,
                3 if args.repeat is None else args.repeat, args.threads, args.device, tuple(args.mixes or MIXES),
                engines)
    return 0


def _bench_exactness(args: argparse.Namespace) -> int:
    from .exactness import bench_exactness

    bench_exactness(args.backbone, args.size, args.frames, args.checkpoint, args.data, args.threads)
    return 0


def _bench_scale(args: argparse.Namespace) -> int:
    from .scale import bench_scale

    bench_scale(tuple(args.sizes), args.folder, args.frames, args.size, args.batch_size, args.workers)
    return 0


def _bench_setting(parser: argparse.ArgumentParser, *, frames: int, size: int, classes: int) -> None:
    """The model input and machine arguments the model benchmarks share."""
    parser.add_argument("--policy", default="policy_mobilenet_v2")
    parser.add_argument("--frames", type=int, default=frames)
    parser.add_argument("--size", type=int, default=size, help="frame height and width")
    parser.add_argument("--classes", type=int, default=classes)
    parser.add_argument("--threads", type=int, default=0, help="torch threads and Ray CPUs (0: torch's default)")
    parser.add_argument("--device", default="cpu")


def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    """``videoiq bench data|scale|quant|train|infer|exactness``."""
    bench = sub.add_parser("bench", help="benchmarks that print measured figures")
    besub = bench.add_subparsers(dest="bench_command", required=True)
    bd = besub.add_parser("data", help="videos/s: decode-only, PyTorch DataLoader and Ray Data on the same records")
    bd.add_argument("db")
    bd.add_argument("--videos", type=int, default=0, help="videos per pass (0: the whole database)")
    bd.add_argument("--frames", type=int, default=16, help="segments (frames) per clip")
    bd.add_argument("--size", type=int, default=112, help="output crop size")
    bd.add_argument("--batch-size", type=int, default=16)
    bd.add_argument("--workers", type=int, default=2, help="DataLoader workers and Ray CPUs")
    bd.add_argument("--decoder", choices=["simplejpeg", "pil"], default="simplejpeg")
    bd.add_argument("--eval", action="store_true",
                    help="evaluation clips (centre crop) instead of training augmentation")
    bd.add_argument("--epochs", type=int, default=2,
                    help="passes per pipeline; the best pass after the first is reported")
    bd.set_defaults(run=_bench_data)
    bs = besub.add_parser("scale", help="build, open, first batch, epoch, driver memory and eval as a split grows")
    bs.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="videos per split")
    bs.add_argument("--folder", default="bench_scale", help="where the generated videos and splits go (reused)")
    bs.add_argument("--frames", type=int, default=8, help="frames per video (and per training clip)")
    bs.add_argument("--size", type=int, default=32, help="frame side in px (and the crop)")
    bs.add_argument("--batch-size", type=int, default=64)
    bs.add_argument("--workers", type=int, default=0, help="build processes and Ray CPUs (0: every CPU)")
    bs.set_defaults(run=_bench_scale)
    bq = besub.add_parser("quant", help="a quantized conv layer (PACT + DoReFa) vs a plain conv, forward + backward")
    bq.add_argument("--channels", type=int, default=64)
    bq.add_argument("--size", type=int, default=56, help="input height and width")
    bq.add_argument("--batch", type=int, default=16)
    bq.add_argument("--kernel", type=int, default=3)
    bq.add_argument("--repeat", type=int, default=10)
    bq.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    bq.add_argument("--device", default="cpu")
    bq.set_defaults(run=_bench_quant)
    bt = besub.add_parser("train", help="samples/s of each stage's step: bare loop vs Ray Train (1 and 2 workers)")
    bt.add_argument("--backbone", default="resnet18", help="a full-precision ResNet name; ap uses ap_<name>")
    _bench_setting(bt, frames=8, size=112, classes=10)
    bt.add_argument("--batch", type=int, default=4, help="global batch (videos), split across Ray workers")
    bt.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    bt.add_argument("--ray-workers", type=int, nargs="*", default=[1, 2],
                    help="worker counts to measure (none: skip Ray)")
    bt.add_argument("--amp", choices=["off", "bf16"], default="off")
    bt.add_argument("--channels-last", action="store_true")
    bt.add_argument("--storage", default="", help="Ray run folder (default: ./runs/bench)")
    bt.set_defaults(run=_bench_train)
    bi = besub.add_parser("infer", help="conditional execution vs the dense fp and all-precision paths, per policy mix")
    bi.add_argument("--backbone", default="ap_resnet50", help="an any-precision ResNet; the dense fp is its fp twin")
    _bench_setting(bi, frames=16, size=112, classes=200)
    bi.add_argument("--policy-size", type=int, default=84, help="side the policy resizes frames to")
    bi.add_argument("--batch", type=int, default=4, help="videos per call")
    bi.add_argument("--repeat", type=int, help="timed calls per case (default: 3)")
    bi.add_argument("--mixes", nargs="+",
                    help="policy mixes to time (default: all): 32 4 2 (every frame at that width), skip25/50/75 "
                    "(that share skipped, the rest at 32 bits), even (a quarter each of 32, 4, 2, skip)")
    bi.add_argument("--engines", nargs="+", choices=("float", "int8"),
                    help="engines of the backbone rows and mixes (default: float, and int8 where it can run)")
    bi.add_argument("--pipeline", action="store_true",
                    help="the whole videoiq infer pipeline (Ray Data decode, model actors, Parquet) instead: "
                    "videos/s of the dense fp model and VideoIQ on each engine at --mixes (default: even)")
    bi.add_argument("--videos", type=int, help="--pipeline: generated videos per case (default: 96)")
    bi.add_argument("--folder", help="--pipeline: where the generated videos and their split go, reused "
                    "(default: ./runs/bench_infer)")
    bi.add_argument("--checkpoint", help="--pipeline: also a policy checkpoint on its own validation split with "
                    "its own decisions, on each engine")
    bi.add_argument("--actors", type=int, help="--pipeline: model actors, each of --threads torch threads and Ray "
                    "CPUs (default: 1)")
    bi.add_argument("--ray-cpus", type=int, help="--pipeline: logical CPUs of the local Ray (default: the actors' "
                    "CPUs and one to decode, at least the machine's cores)")
    bi.set_defaults(frames=None, size=None)  # 16 and 112; with --pipeline, 8 and 224 (_bench_infer)
    be = besub.add_parser("exactness", help="the int8 engine's logits vs fake quantization's, per width")
    be.add_argument("--backbone", default="ap_resnet50", help="a random any-precision ResNet (without --checkpoint)")
    be.add_argument("--size", type=int, default=224, help="frame height and width (random model)")
    be.add_argument("--frames", type=int, default=16, help="random frames (random model)")
    be.add_argument("--checkpoint", default="", help="an ap or policy checkpoint: its backbone on --data's videos")
    be.add_argument("--data", default="", help="the data root whose validation split the checkpoint is scored on")
    be.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    be.set_defaults(run=_bench_exactness)
    bi.set_defaults(run=_bench_infer)
