"""The pipeline's results: the table that compares full precision, each uniform width and VideoIQ (accuracy,
mAP, GFLOPs per video, what each frame got), and ``pipeline_summary.json``, kept true by
:func:`mark_gone_checkpoints` when a stage trains further.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic

SUMMARY_FILE = "pipeline_summary.json"


def mark_gone_checkpoints(summary_file: Path) -> None:
    """Set ``"kept": false`` on the checkpoints a pipeline summary names that are gone: pruned by Ray Train past
    ``ray.num_to_keep``, or rewritten by an in-process run that trained further (its id differs). The eval
    results the summary names live outside checkpoint folders and stay."""
    from .train.checkpoint import CheckpointError, checkpoint_identity  # torch: only once a stage has run

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
