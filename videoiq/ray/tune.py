"""Ray Tune sweeps of the policy stage (the Ray layer): trials, searchers, schedulers, restore and the report.

:func:`run_sweep` runs a validated :class:`~videoiq.sweeps.spec.Sweep`. Each trial is a Tune function trial
(the Train V2 pattern; a ``Tuner`` over a ``TorchTrainer`` fails under Train V2) that trains the policy
stage on the base config's frozen ap backbone and policy_pretrain checkpoints, read once per trial and
never retrained: in the trial's own process when ``ray.num_workers`` is 0, else on Ray Train workers (both
through the dispatcher the caller passes, :func:`videoiq.dispatch.run_config`, as a stage runs anywhere else,
whose one epoch hook reports to Tune). Each trial's lines reach the sweep's terminal through its relay file,
prefixed with the trial's id. A trial that fails keeps its traceback in
``<trial>/errors/`` and its cause in the trial's state, which the report shows. Every validated epoch
(``optim.val_every``) reports accuracy, mAP, GFLOPs per video and the share of frames at each action. A
trial's run lives in ``<experiment>/trials/<trial id>`` and resumes from its own checkpoint whenever Tune
restarts it (a retry after a crash, or a restored sweep).

Re-running an interrupted sweep (same file, same storage) restores it with ``Tuner.restore``:
finished trials are kept, unfinished and errored ones continue. At the end the Pareto report is
written (:mod:`videoiq.sweeps.report`) and logged to wandb with the plot, next to one wandb run per trial
(all in the group named after the sweep).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import yaml
from ray import tune

from ..atomic import write_text_atomic
from ..config import ConfigError, config_to_dict
from ..errors import RemoteBug, RemoteError, is_user_error, keep_traceback
from ..logs import configure_logging
from ..sweeps.report import SWEEP_FILE, Report, build_report, read_state, trial_dir, update_state
from ..sweeps.spec import COST, Sweep
from ..tracking import Tracker, resolve_mode
from .relay import RELAY_FOLDER, Follower, Relay, run_following
from .train import connect

RunStage = Callable[..., dict[str, Any]]  # (cfg, printer, on_epoch=...) -> {"checkpoint", "metrics"}


def param_space(sweep: Sweep) -> dict[str, Any]:
    """The Tune search space of a sweep, keyed by dotted config key."""
    make = {"uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
            "randint": lambda v: tune.randint(*v), "choice": lambda v: tune.choice(list(v)),
            "grid": lambda v: tune.grid_search(list(v))}
    return {key: make[d.kind](d.values) for key, d in sweep.space.items()}


def search_algorithm(sweep: Sweep) -> Any:
    """Random/grid sampling (seeded), or Optuna with two objectives: accuracy up, GFLOPs down; at most
    ``max_concurrent_trials`` trials at once either way."""
    seed = sweep.searcher_options.get("seed")
    if sweep.searcher == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna = OptunaSearch(metric=[sweep.metric, COST], mode=["max", "min"], seed=seed)
        return ConcurrencyLimiter(optuna, max_concurrent=sweep.max_concurrent_trials)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=sweep.max_concurrent_trials)


def trial_scheduler(sweep: Sweep, epochs: int) -> Any:
    """ASHA on the accuracy metric over epochs (``training_iteration``), or none."""
    if sweep.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    options = sweep.scheduler_options
    return ASHAScheduler(time_attr="training_iteration", metric=sweep.metric, mode="max", max_t=epochs,
                         grace_period=options.get("grace_period", 1),
                         reduction_factor=options.get("reduction_factor", 2))


def _trial(params: dict[str, Any], *, sweep: Sweep, base: dict[str, Any], experiment: str, wandb_mode: str,
           run_stage: RunStage) -> None:
    """One Tune trial: the policy stage with the trial's values, reporting every validated epoch to Tune from the
    stage's one epoch hook (in this process whether the stage trains here or on Ray Train workers).

    The last epoch is reported only once the stage is over (checkpoint written, wandb run closed), as
    the trial's very last act: Tune may end a trial as soon as it has a report it wants to stop at. What the
    trial says goes to the sweep's driver through its relay file (``<trial>/relay/trial.jsonl``).
    """
    trial_id = tune.get_context().get_trial_id()
    folder = trial_dir(experiment, trial_id)
    relay = Relay(folder / RELAY_FOLDER / "trial.jsonl")
    configure_logging(handler=relay.handler())
    cfg = sweep.trial_config(params, base)
    cfg.run.storage_path, cfg.run.name = str(folder.parent), trial_id
    cfg.logging.wandb = wandb_mode  # resolved in the driver: trial processes may not have its environment
    cfg.logging.group = cfg.logging.group or sweep.name
    epochs = cfg.optim.epochs
    attempts = int(read_state(folder).get("attempts", 0)) + 1
    update_state(folder, trial_id=trial_id, params=params, status="running", attempts=attempts, error="")

    def report(epoch: int, metrics: dict[str, float]) -> None:
        if epoch < epochs and _validated(metrics):
            tune.report(metrics)

    try:
        final = run_stage(cfg, relay.say, on_epoch=report)["metrics"]
    except Exception as e:
        log = e.log if isinstance(e, (RemoteError, RemoteBug)) else keep_traceback(folder, "trial", e)
        cause = (e.message if isinstance(e, (RemoteError, RemoteBug)) else str(e) if is_user_error(e)
                 else f"{type(e).__name__}: {e}")
        update_state(folder, status="error", error=f"{cause} (full traceback: {log})")
        relay.say(f"videoiq: error: {cause}" if is_user_error(e) else f"videoiq: internal error: {cause} ({log})")
        raise
    update_state(folder, status="finished")
    tune.report(final)


def _validated(metrics: dict[str, Any]) -> bool:
    """Whether an epoch's metrics hold a validation (``optim.val_every`` skips some): Tune sees only those,
    so every report it gets carries the sweep's metric."""
    return any(k.startswith("val/") for k in metrics)


def _check_resumable(sweep: Sweep, spec: dict[str, Any]) -> None:
    """An experiment folder is only continued by the sweep that started it."""
    path = sweep.experiment_dir / SWEEP_FILE
    if not path.is_file():
        return
    saved = yaml.safe_load(path.read_text())
    differ = sorted(k for k in set(saved) | set(spec) if k != "storage_path" and saved.get(k) != spec.get(k))
    if differ:
        raise ConfigError(f"{sweep.source}: the experiment {sweep.experiment_dir} was started by a different sweep "
                          f"(differs in {', '.join(differ)}); give this sweep another name or storage_path")


def run_sweep(sweep: Sweep, run_stage: RunStage, printer: Callable[[str], None] = print) -> Report:
    """Run (or continue) a sweep to the end; write, log and return its Pareto report. ``run_stage`` runs each
    trial's stage (:func:`videoiq.dispatch.run_config`, passed in so that this package stays below the entry points)."""
    base = sweep.base_config()
    base_cfg = sweep.trial_config({}, base)
    base_cfg.check_inputs(f"{sweep.source} (the base config)")
    spec = {**sweep.as_dict(), "base_config": config_to_dict(base_cfg)}
    _check_resumable(sweep, spec)
    exp = sweep.experiment_dir
    exp.mkdir(parents=True, exist_ok=True)
    write_text_atomic(exp / SWEEP_FILE, yaml.safe_dump(spec, sort_keys=False))
    connect()
    mode = resolve_mode(base_cfg.logging.wandb)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, sweep=sweep, base=base, experiment=str(exp), wandb_mode=mode, run_stage=run_stage),
        {"CPU": sweep.cpus})
    if tune.Tuner.can_restore(str(exp)):
        printer(f"tune: continuing the interrupted sweep in {exp}")
        tuner = tune.Tuner.restore(str(exp), trainable, resume_unfinished=True, resume_errored=True)
    else:
        printer(f"tune: {sweep.name}: {sweep.num_samples} sample(s) of {len(sweep.space)} key(s), "
                f"{sweep.searcher} search, scheduler {sweep.scheduler}; experiment {exp}")
        tuner = tune.Tuner(
            trainable, param_space=param_space(sweep),
            tune_config=tune.TuneConfig(search_alg=search_algorithm(sweep),
                                        scheduler=trial_scheduler(sweep, base_cfg.optim.epochs),
                                        num_samples=sweep.num_samples),
            run_config=tune.RunConfig(name=sweep.name, storage_path=str(exp.parent), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=sweep.max_failures)))
    # every trial's lines, each after its id. Tune's own reporting is off: its new output engine prints its
    # experiment box and every failed trial's table even at verbose=0, its legacy one honours verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    follower = Follower(exp / "trials", f"*/{RELAY_FOLDER}/trial.jsonl",
                        prefix=lambda path: f"trial {path.parent.parent.name}: ")
    # Tune logs each failed attempt's Ray traceback; the report below names the cause, and the trial's own
    # traceback is kept in its folder
    tune_logger = logging.getLogger("ray.tune")
    level, tune_logger.level = tune_logger.level, logging.CRITICAL
    try:
        run_following(tuner.fit, follower, printer)
    finally:
        tune_logger.setLevel(level)
    for folder in (exp / "trials").glob("*"):
        if read_state(folder).get("status") == "running":  # fit() is over: the scheduler ended it early
            update_state(folder, status="stopped")
    report = build_report(exp, printer)
    with Tracker.start(mode=mode, directory=exp, project=base_cfg.logging.project, name="pareto", job_type="sweep",
                       group=base_cfg.logging.group or sweep.name, config=spec) as tracker:
        tracker.table("pareto", *report.columns())
        tracker.image("pareto_plot", report.files["png"])
        tracker.summary({"trials": len(report.trials), "front": sum(t.front == 0 for t in report.trials)})
    return report

