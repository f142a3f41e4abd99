"""Weights & Biases tracking of a run: one wandb run per stage, written by rank 0 only.

The local ``metrics.jsonl`` of a run (written by the stage, not here) is the record that results
depend on; wandb is the dashboard. The mode comes from ``logging.wandb``:

* ``auto`` (default): ``$WANDB_MODE`` if it is set, else ``online`` when ``$WANDB_API_KEY`` is set and
  ``offline`` otherwise, so a machine without a key never waits on the network;
* ``online`` / ``offline`` / ``disabled``: as named (``online`` without an API key is an error before
  anything starts).

Runs are written under the run directory (``<run dir>/wandb/``). The run id is kept in
``<run dir>/wandb-<run name>.id``, so a resumed stage continues the same wandb run online (offline,
each resumption is a new ``offline-run-*`` folder of the same id, merged by ``wandb sync``). Epoch
metrics are plotted against ``epoch``, progress records (``step/*``) against ``global_step``.
``import wandb`` happens on the first run started, never at import time.
"""
from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import VideoiqError

MODES = ("online", "offline", "disabled")
log = logging.getLogger("videoiq.tracking")


class TrackingError(VideoiqError, RuntimeError):
    """wandb cannot be used as configured (e.g. online without an API key)."""


def resolve_mode(setting: str, env: Mapping[str, str] = os.environ) -> str:
    """The wandb mode that ``logging.wandb`` means here: ``online``, ``offline`` or ``disabled``."""
    if setting != "auto":
        if setting not in MODES:
            raise TrackingError(f"logging.wandb: expected auto, {', '.join(MODES)}; got {setting!r}")
        return setting
    from_env = {"dryrun": "offline", "run": "online"}.get(env.get("WANDB_MODE", ""), env.get("WANDB_MODE", ""))
    if from_env in MODES:
        return from_env
    return "online" if env.get("WANDB_API_KEY") else "offline"


def check_mode(mode: str, setting: str = "logging.wandb") -> None:
    """Refuse an ``online`` mode without an API key (before any work: the run would fail at its first log)."""
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        raise TrackingError(f"{setting}: online needs WANDB_API_KEY in the environment "
                            "(or use auto/offline: offline runs upload later with `wandb sync`)")


def wandb_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The ``WANDB_*`` variables of this process, for Ray workers that do not inherit the driver's env."""
    return {k: v for k, v in env.items() if k.startswith("WANDB_")}


class Tracker:
    """A wandb run, or nothing (``disabled``, and every rank but 0): the same calls either way."""

    def __init__(self, run: Any = None):
        self.run = run

    @classmethod
    def start(cls, *, mode: str, directory: str | os.PathLike, project: str, name: str, job_type: str,
              group: str | None, config: Mapping[str, Any], resume: bool = True) -> Tracker:
        """Open (or, with ``resume``, go on with) the wandb run ``name`` of ``directory``; ``mode`` as
        :func:`resolve_mode` returns it."""
        if mode == "disabled":
            return cls(None)
        check_mode(mode)
        import wandb

        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / f"wandb-{name}.id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else ""
        if not run_id:
            run_id = secrets.token_hex(6)
            id_file.write_text(run_id + "\n")
        # console off: output capture fights Ray's and pytest's own; stats off: no sampler thread per run
        # silent: no banners in job logs (the run folder is in metrics.jsonl's folder, wandb-<name>.id beside it)
        settings = wandb.Settings(console="off", quiet=True, silent=True, x_disable_stats=True, init_timeout=120)
        run = wandb.init(project=project, dir=str(folder), id=run_id, resume="allow", name=name, group=group,
                         job_type=job_type, config=dict(config), mode=mode, settings=settings)
        run.define_metric("epoch")
        run.define_metric("global_step")
        for prefix in ("train/*", "val/*", "lr", "temperature"):
            run.define_metric(prefix, step_metric="epoch")
        run.define_metric("step/*", step_metric="global_step")
        return cls(run)

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, metrics: Mapping[str, Any]) -> None:
        """One history row (epoch metrics with ``epoch``, progress records with ``global_step``)."""
        if self.run is not None:
            self.run.log(dict(metrics))

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Values shown as the run's result (the final metrics)."""
        if self.run is not None:
            self.run.summary.update(dict(metrics))

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Log a table (e.g. per-class AP) under ``key``."""
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def image(self, key: str, path: str | os.PathLike) -> None:
        """Log an image file (e.g. the Pareto plot) under ``key``."""
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))})

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        self.finish(failed=kind is not None)

    def finish(self, failed: bool = False) -> None:
        if self.run is None:
            return
        import wandb

        run, self.run = self.run, None
        try:
            run.finish(exit_code=1 if failed else 0)
            # stop wandb's service process now: left to the interpreter's exit, its teardown races the
            # end of Ray worker processes and prints a spurious "Connection lost" traceback
            wandb.teardown()
        except Exception as e:  # the dashboard must never fail a run whose results are already on disk
            log.warning("wandb: closing the run failed (%s: %s); metrics.jsonl has every result", type(e).__name__, e)
