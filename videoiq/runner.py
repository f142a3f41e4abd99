"""Run a stage or the whole pipeline from config files: the code behind ``videoiq run``, ``videoiq
pipeline`` and the ``launch/*.py`` scripts that ``ray job submit`` starts.

A stage runs in-process when ``ray.num_workers`` is 0 and on Ray Train workers otherwise (connecting
to ``RAY_ADDRESS``, as ``ray job submit`` sets it, or starting a local Ray). Its output goes to the run
directory ``<ray.storage_path>/<ray.name or stage_dataset>``; re-running the same command resumes it,
and a finished stage is not trained again, unless what it was built from changed (``train/lineage.py``).

The pipeline runs ``fp -> ap``, ``policy_pretrain``, ``policy``, then ``eval`` of the fp, ap (every
width) and policy checkpoints, passing each checkpoint to the next stage's config
(``init.backbone_checkpoint``, ``init.policy_backbone_checkpoint``, ``eval.checkpoint``), and prints
one table: accuracy, mAP, GFLOPs per video and precision usage, kept with each checkpoint's identity and
each eval's results file in ``pipeline_summary.json`` (:func:`mark_gone_checkpoints` keeps it honest when a
stage trains further).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic
from .config import STAGES, ConfigError, StageConfig, apply_overrides, config_from_dict, read_yaml
from .errors import run_guarded
from .logs import configure_logging
from .tracking import Tracker, resolve_mode

PIPELINE = ("fp", "ap", "policy_pretrain", "policy", "eval")


def run_dir(cfg: StageConfig) -> Path:
    """Where a stage's run lives: ``<ray.storage_path>/<ray.name or <stage>_<dataset>>``."""
    return Path(os.path.abspath(cfg.ray.storage_path)) / (cfg.ray.name or f"{cfg.STAGE}_{cfg.data.dataset}")


def device_of(cfg: StageConfig) -> str:
    """The device a stage runs on in this process: ``cuda`` with ``ray.use_gpu``, else ``cpu`` (Ray Train
    workers are given theirs by Ray)."""
    return "cuda" if cfg.ray.use_gpu else "cpu"


def run_config(cfg: StageConfig, printer: Callable[[str], None] = print, *,
               on_epoch: Callable[[int, dict[str, float]], None] | None = None,
               callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Run one stage, wherever its config says: the one dispatcher every entry point goes through.

    Checks the inputs, then evaluates (``eval``), trains in this process (``ray.num_workers: 0``,
    :func:`~videoiq.train.run.train_in_process`) or on Ray Train workers
    (:func:`~videoiq.ray.train.train_on_ray`) into :func:`run_dir`. ``on_epoch`` is called after each
    in-process epoch's checkpoint; ``callbacks`` go to the Ray Train run (a Tune trial passes one of each).
    Returns ``{"checkpoint": path, "metrics": {...}}`` (for eval, ``"results"`` too).
    """
    cfg.check_inputs()
    if cfg.STAGE == "eval":
        from .train.evaluate import evaluate_checkpoint

        results = evaluate_checkpoint(cfg, device=device_of(cfg), printer=printer)
        return {"checkpoint": results["checkpoint"], "metrics": results["metrics"], "results": results}
    out = run_dir(cfg)
    if cfg.ray.num_workers == 0:
        from .train.run import train_in_process

        metrics = train_in_process(cfg, out, device=device_of(cfg), printer=printer, on_epoch=on_epoch)
        mark_gone_checkpoints(out.parent / SUMMARY_FILE)
        return {"checkpoint": str(out / "checkpoint.pt"), "metrics": metrics}
    from .ray.train import train_on_ray

    path, metrics = train_on_ray(cfg, out, printer=printer, callbacks=callbacks)
    mark_gone_checkpoints(out.parent / SUMMARY_FILE)
    return {"checkpoint": path, "metrics": metrics}


SUMMARY_FILE = "pipeline_summary.json"


def mark_gone_checkpoints(summary_file: Path) -> None:
    """Set ``"kept": false`` on the checkpoints a pipeline summary names that are gone: pruned by Ray Train past
    ``ray.num_to_keep``, or rewritten by an in-process run that trained further (its id differs). The eval
    results the summary names live outside checkpoint folders and stay."""
    from .train.checkpoint import CheckpointError, checkpoint_identity

    if not summary_file.is_file():
        return
    summary = json.loads(summary_file.read_text())
    changed = False
    for entry in summary.get("checkpoints", {}).values():
        if not isinstance(entry, dict) or not entry.get("kept"):
            continue
        try:
            still = checkpoint_identity(entry["path"])["id"] == entry["id"]
        except CheckpointError:
            still = False
        if not still:
            entry["kept"], changed = False, True
    if changed:
        write_text_atomic(summary_file, json.dumps(summary, indent=1) + "\n")


def load_stage_config(path: str, overrides: Sequence[str], stage: str | None = None) -> StageConfig:
    """A stage config from YAML with ``--set`` overrides; ``stage`` (a launcher's) must match its ``stage:``."""
    data = apply_overrides(read_yaml(path), overrides)
    if stage is not None and data.get("stage") != stage:
        raise ConfigError(f"{path}: is a {data.get('stage')!r} config; this launcher runs the {stage!r} stage")
    return config_from_dict(data, path)


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE [--set KEY=VALUE ...]``: the arguments of ``videoiq run`` and ``launch/<stage>.py``."""
    parser.add_argument("--config", required=True, help="stage YAML (launch/configs/...)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides, values in YAML")


def run_stage_command(args: argparse.Namespace, stage: str | None = None) -> int:
    """Run the stage of ``args.config`` (which must be ``stage``'s, when given); print its checkpoint and metrics."""
    result = run_config(load_stage_config(args.config, args.set, stage))
    print(json.dumps({"checkpoint": result["checkpoint"], "metrics": result["metrics"]}, indent=1))
    return 0


def stage_main(stage: str, argv: Sequence[str] | None = None) -> int:
    """``launch/<stage>.py --config FILE [--set KEY=VALUE ...]``: the ``ray job submit`` entry point of a stage."""
    parser = argparse.ArgumentParser(prog=f"launch/{stage}.py", description=f"Run the {stage} stage of VideoIQ.")
    add_stage_arguments(parser)
    args = parser.parse_args(argv)
    return guard(lambda: run_stage_command(args, stage))


def guard(body: Callable[[], int]) -> int:
    """A launcher's body with logging configured and the one error handler (:func:`videoiq.errors.run_guarded`)."""
    configure_logging()
    return run_guarded(body)


def run_pipeline(configs: dict[str, str], overrides: Sequence[str],
                 printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the five stages from their config files, handing checkpoints on; returns every result."""
    missing = [s for s in PIPELINE if s not in configs]
    if missing:
        raise ConfigError(f"the pipeline needs a config for every stage; missing: {', '.join(missing)}")
    per_stage = {s: shared_overrides(s, overrides) for s in PIPELINE}
    done: dict[str, dict[str, Any]] = {}
    out = Path(os.path.abspath(load_stage_config(configs["policy"], per_stage["policy"], "policy").ray.storage_path))
    group = "/".join(out.parts[-2:])  # every stage's wandb run in one group, named after the storage path

    def load(name: str, extra: Sequence[str] = ()) -> StageConfig:
        cfg = load_stage_config(configs[name], [*per_stage[name], *extra], name)
        cfg.logging.group = cfg.logging.group or group
        return cfg

    def stage(name: str, extra: Sequence[str] = ()) -> dict[str, Any]:
        cfg = load(name, extra)
        printer(f"==> {name}: {configs[name]}")
        done[name] = run_config(cfg, printer)
        return done[name]

    fp = stage("fp")["checkpoint"]
    ap = stage("ap", [f"init.backbone_checkpoint={fp}"])["checkpoint"]
    pp = stage("policy_pretrain")["checkpoint"]
    policy = stage("policy", [f"init.backbone_checkpoint={ap}", f"init.policy_backbone_checkpoint={pp}"])["checkpoint"]
    evals = {}
    for name, ckpt in (("fp", fp), ("ap", ap), ("policy", policy)):
        cfg = load("eval", [f"eval.checkpoint={ckpt}"])
        printer(f"==> eval of the {name} checkpoint")
        evals[name] = run_config(cfg, printer)["results"]
    from .train.checkpoint import checkpoint_identity

    rows = summary_rows(evals)
    summary = {"checkpoints": {k: {**checkpoint_identity(v["checkpoint"]), "kept": True} for k, v in done.items()},
               "eval": evals, "table": summary_table(rows)}
    write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    with Tracker.start(mode=resolve_mode(cfg.logging.wandb), directory=out, project=cfg.logging.project,
                       name="pipeline", job_type="summary", group=cfg.logging.group,
                       config={"configs": configs, "overrides": list(overrides)}) as tracker:
        tracker.table("pipeline", [*SUMMARY_COLUMNS, "per frame"],
                      [[name, *(m.get(k) for k in SUMMARY_METRICS), note] for name, m, note in rows])
    printer(summary["table"])
    printer(f"summary: {out / SUMMARY_FILE}")
    return summary


def shared_overrides(stage: str, overrides: Sequence[str]) -> list[str]:
    """The pipeline-wide overrides that apply to ``stage`` (those whose section it has, e.g. no ``optim`` for
    eval); an override no stage has is an error, so a typo is never silently dropped."""
    sections = {s: {f.name for f in dataclasses.fields(STAGES[s])} | {"stage"} for s in PIPELINE}
    for item in overrides:
        top = item.split("=", 1)[0].split(".")[0].strip()
        if not any(top in names for names in sections.values()):
            raise ConfigError(f"--set {item!r}: no stage has a {top!r} section")
    return [o for o in overrides if o.split("=", 1)[0].split(".")[0].strip() in sections[stage]]


SUMMARY_COLUMNS = ("model", "top-1 %", "mAP %", "GFLOPs/video", "skips free")
SUMMARY_METRICS = ("val/top1", "val/mAP", "val/gflops", "val/gflops_run")


def _usage_text(metrics: dict[str, float], prefix: str) -> str:
    """``"skip 97%, 2bit 3%"``: the actions of ``<prefix><action>`` keys used on at least 0.5% of frames."""
    used = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix) and "/" not in k[len(prefix):]}
    return ", ".join(f"{a} {v:.0f}%" for a, v in used.items() if v >= 0.5)


def summary_rows(evals: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, float], str]]:
    """fp vs ap at each width vs VideoIQ: ``(model, metrics, what each frame got)`` per row; with frame kinds,
    a width's row says how often it reads each kind of frame, and VideoIQ has one row of actions per kind."""
    def reads(m: dict[str, float], prefix: str) -> str:
        kinds = {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix)}
        return ("frames read correctly: " + ", ".join(f"{k} {v:.0f}%" for k, v in kinds.items())) if kinds else ""

    fp = evals["fp"]["metrics"]
    rows = [("full precision (fp)", {**fp, "val/gflops_run": fp["val/gflops"]}, reads(fp, "val/frames/"))]
    ap = evals["ap"]["metrics"]
    for key in sorted({k.split("/")[1] for k in ap if k.startswith("val/b")}, key=lambda b: -int(b[1:])):
        width = {k.replace(f"val/{key}/", "val/"): v for k, v in ap.items() if k.startswith(f"val/{key}/")}
        rows.append((f"any-precision at {key[1:]} bits", {**width, "val/gflops_run": width["val/gflops"]},
                     reads(width, "val/frames/")))
    pol = evals["policy"]["metrics"]
    rows.append((f"VideoIQ ({evals['policy']['decisions']})", pol, _usage_text(pol, "val/usage/")))
    for kind in dict.fromkeys(k.split("/")[2] for k in pol if k.count("/") == 3 and k.startswith("val/usage/")):
        rows.append((f"  on {kind} frames", {}, _usage_text(pol, f"val/usage/{kind}/")))
    return rows


def uniform_comparison(rows: list[tuple[str, dict[str, float], str]]) -> str:
    """Two lines: VideoIQ against the widest width (accuracy and share of its GFLOPs), and what uniform
    precision (a width, or a mix of two adjacent widths) reaches at VideoIQ's GFLOPs."""
    from .metrics import uniform_line

    widths = [m for name, m, _ in rows if name.startswith("any-precision")]
    policy = next(m for name, m, _ in rows if name.startswith("VideoIQ"))
    cost, top1 = policy["val/gflops"], policy["val/top1"]
    widest = next(name for name, _, _ in rows if name.startswith("any-precision")).split(" at ")[1]
    top = widths[0]
    lines = [f"VideoIQ against {widest}: {top1 - top['val/top1']:+.1f} points at {100 * cost / top['val/gflops']:.0f}% "
             f"of its GFLOPs"]
    line = uniform_line([(m["val/gflops"], m["val/top1"]) for m in widths], cost)
    if line is None:
        lines.append(f"uniform precision: no width is as cheap as VideoIQ's {cost:.4g} GFLOPs")
    else:
        lines.append(f"uniform precision at VideoIQ's {cost:.4g} GFLOPs: {line:.1f}% top-1 (the line through the "
                     f"widths around it); VideoIQ {top1:.1f}% ({top1 - line:+.1f} points)")
    return "\n".join(lines)


def summary_table(rows: list[tuple[str, dict[str, float], str]]) -> str:
    """The rows of :func:`summary_rows` as a text table, with the uniform-precision comparison under it."""
    head = (f"{SUMMARY_COLUMNS[0]:28s} {SUMMARY_COLUMNS[1]:>7s} {SUMMARY_COLUMNS[2]:>6s} {SUMMARY_COLUMNS[3]:>12s} "
            f"{SUMMARY_COLUMNS[4]:>10s}  per frame")
    lines = [head, "-" * 100]
    for name, m, note in rows:
        if not m:
            lines.append(f"{name:28s} {'':>7s} {'':>6s} {'':>12s} {'':>10s}  {note}")
            continue
        lines.append(f"{name:28s} {m['val/top1']:7.1f} {m['val/mAP']:6.1f} {m['val/gflops']:12.4f} "
                     f"{m['val/gflops_run']:10.4f}  {note}")
    return "\n".join(lines + ["", uniform_comparison(rows)])


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """``--fp F --ap A --policy-pretrain P --policy Q --eval E [--set ...]``: ``videoiq pipeline``'s and
    ``launch/pipeline.py``'s arguments."""
    for name in PIPELINE:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, help=f"the {name} stage YAML")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides applied to every stage")


def run_pipeline_command(args: argparse.Namespace) -> int:
    """Run the pipeline of ``args`` (from :func:`add_pipeline_arguments`); it prints the table itself."""
    run_pipeline({s: getattr(args, s) for s in PIPELINE}, args.set)
    return 0


def pipeline_main(argv: Sequence[str] | None = None) -> int:
    """``launch/pipeline.py ...``: the ``ray job submit`` entry point of the whole pipeline."""
    parser = argparse.ArgumentParser(prog="launch/pipeline.py",
                                     description="Run fp -> ap, policy_pretrain, policy, eval.")
    add_pipeline_arguments(parser)
    args = parser.parse_args(argv)
    return guard(lambda: run_pipeline_command(args))


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sweep FILE [--storage-path DIR] [--set KEY=VALUE ...]``: ``videoiq tune run``'s and ``launch/tune.py``'s
    arguments."""
    parser.add_argument("--sweep", required=True, help="sweep YAML (tune_configs/...)")
    parser.add_argument("--storage-path", help="where experiments live (default: the sweep file's storage_path)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="values fixed for every trial (added to the sweep's fixed:), e.g. data.root=/data/anet")


def run_sweep_command(args: argparse.Namespace) -> int:
    """Run (or continue) the sweep of ``args`` (from :func:`add_sweep_arguments`); it prints its report."""
    from .ray.tune import run_sweep
    from .sweeps.spec import load_sweep

    run_sweep(load_sweep(args.sweep, args.storage_path, args.set), run_config)
    return 0


def tune_main(argv: Sequence[str] | None = None) -> int:
    """``launch/tune.py --sweep FILE ...``: the ``ray job submit`` entry point of a Tune sweep."""
    parser = argparse.ArgumentParser(prog="launch/tune.py",
                                     description="Run (or continue) a Ray Tune sweep of the policy stage.")
    add_sweep_arguments(parser)
    args = parser.parse_args(argv)
    return guard(lambda: run_sweep_command(args))
