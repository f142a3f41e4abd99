"""The one dispatcher every entry point runs a stage through (``videoiq run``, the pipeline, the launchers, the
Tune trials): :func:`run_config` runs a stage where its config says, into :func:`run_dir`.

A stage runs in-process when ``ray.num_workers`` is 0 and on Ray Train workers otherwise (connecting
to ``RAY_ADDRESS``, as ``ray job submit`` sets it, or starting a local Ray). Its output goes to the run
directory ``<run.storage_path>/<run.name or stage_dataset>``; re-running the same command resumes it,
and a finished stage is not trained again, unless what it was built from changed (``train/lineage.py``).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import StageConfig
from .summary import SUMMARY_FILE, mark_gone_checkpoints


def run_dir(cfg: StageConfig) -> Path:
    """Where a stage's run lives: ``<run.storage_path>/<run.name or <stage>_<dataset>>``."""
    return Path(os.path.abspath(cfg.run.storage_path)) / (cfg.run.name or f"{cfg.STAGE}_{cfg.data.dataset}")


def device_of(cfg: StageConfig) -> str:
    """The device a stage runs on in this process: ``cuda`` with ``run.use_gpu``, else ``cpu`` (Ray Train
    workers are given theirs by Ray)."""
    return "cuda" if cfg.run.use_gpu else "cpu"


def run_config(cfg: StageConfig, printer: Callable[[str], None] = print, *,
               on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Run one stage, wherever its config says: the one dispatcher every entry point goes through.

    Evaluates (``eval``), trains in this process (``ray.num_workers: 0``,
    :func:`~videoiq.train.session.train_in_process`) or on Ray Train workers
    (:func:`~videoiq.ray.train.train_on_ray`) into :func:`run_dir`; both check the inputs first. ``on_epoch``
    is called in this process after each epoch's checkpoint is kept, wherever the stage trains.
    Returns ``{"checkpoint": path, "metrics": {...}}`` (for eval, ``"results"`` too).
    """
    if cfg.STAGE == "eval":
        from .train.evaluate import evaluate_checkpoint

        results = evaluate_checkpoint(cfg, device=device_of(cfg), printer=printer)
        return {"checkpoint": results["checkpoint"], "metrics": results["metrics"], "results": results}
    out = run_dir(cfg)
    if cfg.ray.num_workers == 0:
        from .train.checkpoint import FILENAME
        from .train.session import train_in_process

        metrics = train_in_process(cfg, out, device=device_of(cfg), printer=printer, on_epoch=on_epoch)
        path = str(out / FILENAME)
    else:
        from .ray.train import train_on_ray

        path, metrics = train_on_ray(cfg, out, printer=printer, on_epoch=on_epoch)
    mark_gone_checkpoints(out.parent / SUMMARY_FILE)
    return {"checkpoint": path, "metrics": metrics}
