"""A sweep's experiment on disk: each trial's state, the accuracy-vs-GFLOPs Pareto front, and the report.

Layout of ``<storage_path>/<name>/`` (Ray Tune's own files sit beside these)::

    sweep.yaml                 the sweep as it was started (a resumed sweep must match it)
    trials/<trial id>/         the trial's policy-stage run: trial.json, metrics.jsonl, checkpoint(s), wandb/
    pareto.csv, pareto.json    every trial, non-dominated first (written by the sweep and by `videoiq tune report`)
    pareto.png                 accuracy vs GFLOPs per video: the trials, the front, the fp and ap references

``trial.json`` holds ``{"trial_id", "params", "status", "attempts", "error"}``; ``status`` is
``running`` while a trial trains (so ``interrupted`` if the sweep died), ``finished``, ``stopped``
(ended early by the scheduler) or ``error`` (after its last retry). Metrics come from each trial's
``metrics.jsonl`` (the run's own record), so the report needs neither Ray nor Tune's result files,
and rebuilds from an interrupted experiment too. No Ray here.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..atomic import write_text_atomic
from ..errors import MissingFileError
from ..train.checkpoint import resolve
from .spec import COST

TRIALS = "trials"
STATE = "trial.json"
SWEEP_FILE = "sweep.yaml"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a crash never leaves half a file)."""
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def trial_dir(experiment: Path, trial_id: str) -> Path:
    return Path(experiment) / TRIALS / trial_id


def read_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def update_state(folder: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into a trial's ``trial.json``."""
    state = {**read_state(folder), **fields}
    write_json(folder / STATE, state)
    return state


@dataclass
class TrialRecord:
    """One trial as the report shows it: its last completed epoch's metrics."""

    trial_id: str
    status: str
    attempts: int
    params: dict[str, Any]
    epochs: int
    metrics: dict[str, float]
    checkpoint: str
    error: str = ""
    front: int | None = None  # 0: on the Pareto front, 1: on it once front 0 is removed, ...


def read_trials(experiment: str | os.PathLike) -> list[TrialRecord]:
    """Every trial of an experiment, from its trial folders (in trial-id order)."""
    out = []
    for folder in sorted((Path(experiment) / TRIALS).glob("*")):
        state = read_state(folder)
        if not state:
            continue
        lines = (folder / "metrics.jsonl").read_text().splitlines() if (folder / "metrics.jsonl").exists() else []
        last = json.loads(lines[-1]) if lines else {}
        status = state.get("status", "running")
        out.append(TrialRecord(state["trial_id"], "interrupted" if status == "running" else status,
                               int(state.get("attempts", 1)), state.get("params", {}), int(last.get("epoch", 0)),
                               last, str(resolve(folder)) if lines else "", state.get("error", "")))
    return out


def pareto_fronts(points: Sequence[tuple[float, float]]) -> list[int]:
    """Front index of each ``(accuracy, cost)`` point, accuracy maximised and cost minimised: 0 for the
    non-dominated points, 1 for those non-dominated once front 0 is removed, and so on."""
    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] >= b[0] and a[1] <= b[1] and a != b

    fronts = [-1] * len(points)
    left = set(range(len(points)))
    rank = 0
    while left:
        current = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in current:
            fronts[i] = rank
        left -= current
        rank += 1
    return fronts


def rank_trials(trials: list[TrialRecord], metric: str) -> list[TrialRecord]:
    """Set each scored trial's front and sort: front 0 first, then by accuracy; unscored trials last."""
    scored = [t for t in trials if metric in t.metrics and COST in t.metrics]
    for t, f in zip(scored, pareto_fronts([(t.metrics[metric], t.metrics[COST]) for t in scored]), strict=True):
        t.front = f
    return sorted(trials, key=lambda t: (t.front is None, t.front or 0, -t.metrics.get(metric, 0.0), t.trial_id))


@dataclass
class Reference:
    """A fixed model for comparison: the fp model, or the ap model at one width (no policy)."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)


def reference_points(base: dict[str, Any]) -> list[Reference]:
    """fp and ap-at-each-width points from the base config's ap checkpoint (and the fp checkpoint that
    initialised it): their last validation metrics, and GMACs per video counted at the sweep's frames and
    resolution. Empty when the checkpoints are gone."""
    from ..flops import video_cost
    from ..train.checkpoint import CheckpointError, build_from_entry, load_checkpoint

    init, data = base.get("init", {}), base.get("data", {})
    try:
        ap = load_checkpoint(init.get("backbone_checkpoint") or "", stages=("ap",))
    except CheckpointError:
        return []
    entry = ap["models"]["model"]
    backbone = build_from_entry(entry, "model", "ap checkpoint")
    cost = video_cost(backbone, None, num_frames=data.get("num_frames", 16) * data.get("frames_per_segment", 1),
                      input_size=data.get("input_size", 224))
    out = []
    try:
        fp = load_checkpoint(ap["config"]["init"].get("backbone_checkpoint") or "", stages=("fp",))
        out.append(Reference("fp", {k: fp["metrics"][k] for k in ("val/top1", "val/mAP") if k in fp["metrics"]}
                             | {COST: cost.gmacs({"32bit": 1.0}, with_policy=False).total}))
    except CheckpointError:
        pass
    for bits in entry["kwargs"]["bit_widths"]:
        m = {k.replace(f"val/b{bits}/", "val/"): v for k, v in ap["metrics"].items() if k.startswith(f"val/b{bits}/")}
        out.append(Reference(f"ap {bits}-bit", m | {COST: cost.gmacs({f"{bits}bit": 1.0}, with_policy=False).total}))
    return out


@dataclass
class Report:
    """The ranked trials and references of an experiment, and where the report files went."""

    name: str
    metric: str
    trials: list[TrialRecord]
    references: list[Reference]
    files: dict[str, str]

    def columns(self) -> tuple[list[str], list[list[Any]]]:
        """Every trial as one row of plain values (the CSV and the wandb table): front, trial, status,
        attempts, epochs, each searched key, each validation metric, checkpoint, error."""
        keys = sorted({k for t in self.trials for k in t.params})
        metrics = sorted({k for t in self.trials for k in t.metrics if k.startswith("val/")})
        rows = [[t.front, t.trial_id, t.status, t.attempts, t.epochs, *[json.dumps(t.params.get(k)) for k in keys],
                 *[t.metrics.get(m) for m in metrics], t.checkpoint, t.error] for t in self.trials]
        return ["front", "trial", "status", "attempts", "epochs", *keys, *metrics, "checkpoint", "error"], rows

    def table(self) -> str:
        """Every trial, non-dominated first, then the references, as a text table."""
        keys = sorted({k for t in self.trials for k in t.params})
        # the share of all frames at each action (per-kind usage, val/usage/<kind>/<action>, stays in the CSV)
        usage = sorted({k for t in self.trials for k in t.metrics if k.startswith("val/usage/") and k.count("/") == 2},
                       key=lambda k: _action_order(k.split("/")[-1]))

        def number(metrics: dict[str, float], key: str, fmt: str) -> str:
            return format(metrics[key], fmt) if key in metrics else "-"

        head = ["front", "trial", "status", "epochs", self.metric, "GFLOPs", *[u.split("/")[-1] for u in usage], *keys]
        rows = [[("-" if t.front is None else str(t.front)), t.trial_id, t.status, str(t.epochs),
                 number(t.metrics, self.metric, ".2f"), number(t.metrics, COST, ".4f"),
                 *[number(t.metrics, u, ".0f") + ("%" if u in t.metrics else "") for u in usage],
                 *[_short(t.params.get(k)) for k in keys]] for t in self.trials]
        rows += [["ref", r.name, "", "", number(r.metrics, self.metric, ".2f"), number(r.metrics, COST, ".4f"),
                  *[""] * (len(usage) + len(keys))] for r in self.references]
        widths = [max(len(str(x)) for x in column) for column in zip(head, *rows, strict=True)]
        left = {1, 2}  # trial and status read better left-aligned

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

        out = [line(head), "-" * len(line(head))] + [line(r) for r in rows]
        out += [f"error in {t.trial_id} (after {t.attempts} attempts): {t.error.splitlines()[0][:160]}"
                for t in self.trials if t.error]
        return "\n".join(x.rstrip() for x in out)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace(" ", "")


def _action_order(action: str) -> tuple[int, int]:
    if action == "fp":
        return (0, 0)
    if action.endswith("bit"):
        return (1, -int(action[:-3]))
    return (2, int(action[4:]) if action[4:].isdigit() else 0)


def build_report(experiment: str | os.PathLike, printer: Callable[[str], None] | None = None) -> Report:
    """Rank an experiment's trials and write ``pareto.csv``, ``pareto.json`` and ``pareto.png`` into it.

    Works on a finished or interrupted experiment (trials still running are ``interrupted``).
    """
    exp = Path(experiment)
    sweep_file = exp / SWEEP_FILE
    if not sweep_file.is_file():
        raise MissingFileError(f"{exp}: no {SWEEP_FILE}; not a videoiq sweep experiment (see `videoiq tune run`)")
    sweep = yaml.safe_load(sweep_file.read_text())
    metric = sweep["metric"]
    trials = rank_trials(read_trials(exp), metric)
    if not trials:
        raise MissingFileError(f"{exp}: no trial has started yet (nothing under {exp / TRIALS})")
    base = sweep.get("base_config", {})
    references = reference_points(base)
    report = Report(sweep["name"], metric, trials, references, {})
    report.files["csv"] = str(_write_csv(exp / "pareto.csv", report))
    report.files["json"] = str(exp / "pareto.json")
    write_json(exp / "pareto.json", {"name": report.name, "metric": metric, "cost": COST,
                                     "front": [asdict(t) for t in trials if t.front == 0],
                                     "trials": [asdict(t) for t in trials],
                                     "references": [asdict(r) for r in references]})
    report.files["png"] = str(plot_report(report, exp / "pareto.png"))
    if printer is not None:
        printer(report.table())
        printer("files: " + ", ".join(report.files.values()))
    return report


def _write_csv(path: Path, report: Report) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    columns, rows = report.columns()
    writer.writerow(columns)
    writer.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


def plot_report(report: Report, path: Path) -> Path:
    """Accuracy vs GFLOPs per video: every trial, the Pareto front as a step line, the fp/ap references and the
    uniform-precision line through the ap widths."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("the Pareto plot needs matplotlib: pip install 'videoiq[ray]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=110)
    scored = [t for t in report.trials if t.front is not None]
    rest = [t for t in scored if t.front != 0]
    front = sorted((t for t in scored if t.front == 0), key=lambda t: t.metrics[COST])
    ax.scatter([t.metrics[COST] for t in rest], [t.metrics[report.metric] for t in rest], c="#9e9e9e", s=28,
               label="trial (dominated)", zorder=2)
    ax.step([t.metrics[COST] for t in front], [t.metrics[report.metric] for t in front], where="post", c="#d62728",
            lw=1.5, zorder=3)
    ax.scatter([t.metrics[COST] for t in front], [t.metrics[report.metric] for t in front], c="#d62728", s=40,
               label="Pareto front", zorder=4)
    same_point: dict[tuple[float, float], list[str]] = {}
    for t in front:
        same_point.setdefault((t.metrics[COST], t.metrics[report.metric]), []).append(t.trial_id)
    for xy, ids in same_point.items():
        ax.annotate(ids[0] + (f" (+{len(ids) - 1})" if len(ids) > 1 else ""), xy, fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    uniform = sorted((r.metrics[COST], r.metrics[report.metric]) for r in report.references
                     if r.name.startswith("ap ") and report.metric in r.metrics)
    if len(uniform) > 1:  # mixing two adjacent widths over videos reaches any point of the segment between them
        ax.plot(*zip(*uniform, strict=True), c="#1f4e9e", lw=1, ls="--", zorder=1,
                label="uniform precision (ap widths)")
    for r in report.references:
        if report.metric in r.metrics:
            marker = "*" if r.name == "fp" else "s"
            ax.scatter([r.metrics[COST]], [r.metrics[report.metric]], marker=marker, c="#1f4e9e", s=70, zorder=5)
            ax.annotate(r.name, (r.metrics[COST], r.metrics[report.metric]), fontsize=8, xytext=(5, -10),
                        textcoords="offset points", color="#1f4e9e")
    ax.set_xlabel("GFLOPs per video (GMACs, paper convention)")
    ax.set_ylabel(f"{report.metric} (%)")
    ax.set_title(f"{report.name}: {len(scored)} trials, {len(front)} on the front", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
