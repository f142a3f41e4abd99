"""The ``videoiq`` command line: configs, the legacy-flag translator, the model list and FLOPs.

Every subcommand turns a bad input into one ``videoiq: error: ...`` line naming the file, key or
flag (exit code 2) instead of a traceback.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config import STAGES, ConfigError, default_config, dump_yaml, load_config, save_config


def _config_show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    print(dump_yaml(cfg, changes_only=args.changes), end="")
    if args.check_inputs:
        problems = cfg.input_problems()
        if problems:
            raise ConfigError(f"{args.config}: inputs not ready:\n  - " + "\n  - ".join(problems))
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
    from .flops import PAPER_COSTS, video_cost
    from .models import action_names, create_model

    backbone = create_model(args.backbone, num_classes=args.classes)
    precisions = tuple(args.precisions)
    actions = action_names(precisions, args.skips, args.fp_action)
    policy = create_model(args.policy, num_precisions=len(precisions) + int(args.fp_action), skip_choices=args.skips)
    cost = video_cost(backbone, policy, num_frames=args.frames, input_size=args.size)
    per_frame = (cost.fp_macs + cost.quantized_macs) / args.frames / 1e9
    print(f"backbone {args.backbone} at {args.size}x{args.size}: {per_frame:.4f} GMACs per frame at full precision")
    print(f"  full-precision layers (stem conv, fc): {cost.fp_macs / 1e9:.4f} GMACs per {args.frames}-frame video")
    print(f"policy {args.policy}: {cost.policy_cnn_macs / 1e9:.4f} (CNN) + {cost.policy_rnn_macs / 1e9:.4f} (LSTM, heads) GMACs per video")
    paper = PAPER_COSTS.get(args.backbone.removeprefix("ap_")) if (args.frames, args.size) == (16, 224) else None
    header = f"{'every frame at':16s} {'GMACs/video':>12s} {'(frames run)':>13s}"
    print("\n" + header + (f" {'paper formula':>14s}" if paper else ""))
    for action in actions:
        usage = {action: 1.0}
        row = f"{action:16s} {cost.gmacs(usage).total:12.2f} {cost.gmacs(usage, charge_skipped=False).total:13.2f}"
        if paper:
            row += f" {paper.gmacs(usage).total:14.2f}"
        print(row)
    print(
        "\nGMACs/video charges the full-precision stem and fc for skipped frames (the paper's convention); "
        "'frames run' charges them only for frames that run."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videoiq", description="VideoIQ on Ray Train and Tune")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="show, check and translate stage configs")
    csub = config.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print a config with its overrides applied, validated")
    show.add_argument("config", help="stage YAML, e.g. launch/configs/ap_r50-b32-4-2_activitynet.yaml")
    show.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides, values in YAML")
    show.add_argument("--changes", action="store_true", help="print only values that differ from the stage defaults")
    show.add_argument("--check-inputs", action="store_true", help="also fail if data/checkpoint paths are unset or missing")
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
    legacy.add_argument("--full", action="store_true", help="print every value, not only those that differ from the defaults")
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
    flops.set_defaults(run=_flops)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "flags", None) and args.flags[0] == "--":
        args.flags = args.flags[1:]
    try:
        return args.run(args)
    except (ConfigError, KeyError, ValueError, FileNotFoundError, OSError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"videoiq: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
