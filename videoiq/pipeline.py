"""The whole pipeline from five config files: ``fp -> ap``, ``policy_pretrain``, ``policy``, then ``eval`` of the
fp, ap (every width) and policy checkpoints, each checkpoint handed to the next stage's config
(``init.backbone_checkpoint``, ``init.policy_backbone_checkpoint``, ``eval.checkpoint``). It prints one table
(:mod:`videoiq.summary`), kept with each checkpoint's identity and each eval's results file in
``pipeline_summary.json``; its wandb run is started from the policy stage's config, the one the sweeps and
the others' group follow.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic
from .config import STAGES, ConfigError, StageConfig, load_config
from .dispatch import run_config
from .summary import SUMMARY_COLUMNS, SUMMARY_FILE, SUMMARY_METRICS, summary_rows, summary_table
from .tracking import Tracker, resolve_mode

PIPELINE = ("fp", "ap", "policy_pretrain", "policy", "eval")


def run_pipeline(configs: dict[str, str], overrides: Sequence[str],
                 printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the five stages from their config files, handing checkpoints on; returns every result."""
    missing = [s for s in PIPELINE if s not in configs]
    if missing:
        raise ConfigError(f"the pipeline needs a config for every stage; missing: {', '.join(missing)}")
    per_stage = {s: shared_overrides(s, overrides) for s in PIPELINE}
    done: dict[str, dict[str, Any]] = {}
    chief = load_config(configs["policy"], per_stage["policy"], "policy")  # the run the others are grouped under
    out = Path(os.path.abspath(chief.run.storage_path))
    group = "/".join(out.parts[-2:])  # every stage's wandb run in one group, named after the storage path

    def load(name: str, extra: Sequence[str] = ()) -> StageConfig:
        cfg = load_config(configs[name], [*per_stage[name], *extra], name)
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
    with Tracker.start(mode=resolve_mode(chief.logging.wandb), directory=out, project=chief.logging.project,
                       name="pipeline", job_type="summary", group=chief.logging.group or group,
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
    tops = {item: item.split("=", 1)[0].split(".")[0].strip() for item in overrides}
    for item, top in tops.items():
        if not any(top in names for names in sections.values()):
            raise ConfigError(f"--set {item!r}: no stage has a {top!r} section")
    return [item for item in overrides if tops[item] in sections[stage]]


