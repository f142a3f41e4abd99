"""Where a stage's results go on rank 0: progress lines, ``metrics.jsonl`` and its wandb run."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..config import StageConfig, config_to_dict
from ..data.clips import ClipSpec
from ..tracking import Tracker
from .pictures import decisions_picture
from .scoring import Evaluation, class_ap_table
from .stages import Stage
from .tasks import PolicyTask


def start_tracker(cfg: StageConfig, run_dir: Path, mode: str, name: str | None = None,
                  job_type: str | None = None, resume: bool = True) -> Tracker:
    """The stage's wandb run (``mode`` from :func:`videoiq.tracking.resolve_mode`), kept in ``run_dir``; with
    ``resume`` the run of an earlier start in the same folder goes on, else a new one starts."""
    return Tracker.start(mode=mode, directory=run_dir, project=cfg.logging.project, name=name or run_dir.name,
                         job_type=job_type or cfg.STAGE, group=cfg.logging.group, config=config_to_dict(cfg),
                         resume=resume)


class StageLog:
    """Where a stage's results go (rank 0): progress lines, ``metrics.jsonl`` and the wandb run.

    ``metrics.jsonl`` gets one line per epoch *before* the epoch's checkpoint is written, and lines of
    epochs after the checkpoint a run resumes from are dropped (:meth:`resume`), so after any crash
    the file holds each completed epoch exactly once. wandb gets the epoch after its checkpoint.
    """

    SHOWN = ("epoch", "train/loss", "train/top1", "val/top1", "val/mAP", "val/gflops")

    def __init__(self, stage: Stage, run_dir: Path, printer: Callable[[str], None], tracker: Tracker):
        self.stage, self.path, self.printer, self.tracker = stage, run_dir / "metrics.jsonl", printer, tracker

    def resume(self, epoch: int) -> None:
        """Keep only the lines of epochs up to ``epoch`` (the checkpoint a run continues from)."""
        if self.path.exists():
            lines = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("epoch", 0) <= epoch]
            self.path.write_text("".join(ln + "\n" for ln in lines))

    def record(self, metrics: dict[str, float]) -> None:
        """Append the epoch's line to ``metrics.jsonl`` (the local record that never depends on wandb)."""
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")

    def publish(self, epoch: int, metrics: dict[str, float], evaluation: Evaluation | None) -> None:
        """Print the epoch and log it to wandb; after the last epoch also the summary and per-class AP."""
        cfg = self.stage.cfg
        shown = {k: v for k, v in metrics.items() if k in self.SHOWN}
        self.printer(f"{cfg.STAGE}: " + " ".join(f"{k}={v:.4g}" for k, v in shown.items()))
        self.tracker.log(metrics)
        if epoch == cfg.optim.epochs and evaluation is not None:  # the last epoch is always validated
            self.tracker.summary(metrics)
            self.tracker.table("val/per_class_ap", *class_ap_table({"AP %": evaluation.predictions},
                                                                   self.stage.val_labels, self.stage.classes))
            if isinstance(self.stage.task, PolicyTask) and self.tracker.active:
                self.tracker.image("val/decisions", decisions_picture(self.stage.data.val,
                                                                      ClipSpec.from_config(cfg.data, train=False),
                                                                      evaluation.predictions,
                                                                      self.stage.task.model.actions,
                                                                      self.path.parent / "decisions_val.png"))

    def step(self, record: dict[str, float]) -> None:
        """A progress record from the loop every ``logging.log_every`` steps."""
        of = f"/{record['steps']:.0f}" if "steps" in record else ""
        left = f", epoch ends in {record['seconds_left']:.0f} s" if "seconds_left" in record else ""
        self.printer(f"{self.stage.cfg.STAGE}: epoch {record['epoch'] + 1} step {record['step']}{of} "
                     f"loss={record['loss']:.4g} lr={record['lr']:.3g} {record['videos_per_s']:.1f} videos/s{left}")
        self.tracker.log({"global_step": self.stage.global_step + record["step"], "step/loss": record["loss"],
                          "step/lr": record["lr"]})
