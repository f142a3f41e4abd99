"""Sweep files (``tune_configs/*.yaml``): what a Ray Tune sweep of the policy stage varies, checked on load.

A sweep names a policy-stage config and the dotted keys to vary (plain data, no Ray here)::

    base: launch/configs/demo/policy.yaml   # a policy-stage YAML (relative paths: from the current directory)
    name: policy_demo_tradeoff             # the experiment, in <storage_path>/<name> (default: the file's stem)
    storage_path: demo_out/tune
    fixed: {optim.epochs: 6}                # applied to every trial
    search_space:                           # dotted key -> one domain
      loss.efficiency_weight: {loguniform: [0.02, 1.0]}
      loss.balance_weight: {uniform: [0.0, 2.0]}
      optim.policy_lr: {grid: [0.01, 0.1]}
      policy.precisions: {choice: [[32, 4, 2], [4, 2]]}
    metric: val/mAP                         # the accuracy to maximise; GFLOPs per video are minimised
    searcher: random                        # random | grid | optuna (or {optuna: {seed: 0}})
    scheduler: none                         # none | asha (or {asha: {grace_period: 1, reduction_factor: 2}})
    num_samples: 8
    max_concurrent_trials: 2
    max_failures: 1                         # a crashed trial is retried this many times
    trial_resources: {cpus: 1}              # CPUs of each trial's own process

Domains: ``uniform: [low, high]``, ``loguniform: [low, high]`` (low > 0), ``randint: [low, high)``,
``choice: [values]`` (sampled) and ``grid: [values]`` (every value, times ``num_samples``). Every
problem is reported at once, naming the key; each domain's values are applied to the base config and
validated there, so a value the policy stage would refuse is refused here, before any trial runs.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, PolicyConfig, absolute_paths, config_from_dict, parse_override, read_yaml, set_value

DOMAINS = ("uniform", "loguniform", "randint", "choice", "grid")
SEARCHERS = ("random", "grid", "optuna")
SCHEDULERS = ("none", "asha")
METRICS = ("val/mAP", "val/top1")
COST = "val/gflops"
"""The cost every trial reports and every sweep minimises: GMACs per video, policy included."""
_KEYS = ("base", "name", "storage_path", "fixed", "search_space", "metric", "searcher", "scheduler",
         "num_samples", "max_concurrent_trials", "max_failures", "trial_resources")


@dataclass(frozen=True)
class Domain:
    """One searched key: ``kind`` in :data:`DOMAINS` and its bounds or values."""

    kind: str
    values: tuple[Any, ...]

    def probes(self) -> tuple[Any, ...]:
        """Values that stand for the domain when checking it against the stage config."""
        if self.kind in ("choice", "grid"):
            return self.values
        if self.kind == "randint":
            return (self.values[0], self.values[1] - 1)
        return self.values


@dataclass
class Sweep:
    """A validated sweep file."""

    source: str
    base: str
    name: str
    storage_path: str
    fixed: dict[str, Any]
    space: dict[str, Domain]
    metric: str = "val/mAP"
    searcher: str = "random"
    searcher_options: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "none"
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 1
    max_concurrent_trials: int = 1
    max_failures: int = 0
    cpus: float = 1.0

    @property
    def experiment_dir(self) -> Path:
        return Path(self.storage_path).absolute() / self.name

    def base_config(self) -> dict[str, Any]:
        """The base config with ``fixed`` applied and its input paths made absolute (trials run in
        other working directories), as a plain dict."""
        data = read_yaml(self.base)
        for key, value in self.fixed.items():
            set_value(data, key, value, f"{self.source}: fixed.{key}")
        return absolute_paths(data)

    def trial_config(self, params: dict[str, Any], base: dict[str, Any] | None = None) -> PolicyConfig:
        """The policy config of one trial: :meth:`base_config` with the trial's sampled values."""
        data = copy.deepcopy(base if base is not None else self.base_config())
        for key, value in params.items():
            set_value(data, key, value, f"{self.source}: search_space.{key}")
        cfg = config_from_dict(data, f"{self.source} (base {self.base})")
        assert isinstance(cfg, PolicyConfig)
        return cfg

    def as_dict(self) -> dict[str, Any]:
        """The sweep as plain data (saved with the experiment, compared when it is resumed)."""
        return {"base": os.path.abspath(self.base), "name": self.name, "storage_path": self.storage_path,
                "fixed": self.fixed, "search_space": {k: {d.kind: list(d.values)} for k, d in self.space.items()},
                "metric": self.metric, "searcher": {self.searcher: self.searcher_options},
                "scheduler": {self.scheduler: self.scheduler_options}, "num_samples": self.num_samples,
                "max_concurrent_trials": self.max_concurrent_trials, "max_failures": self.max_failures,
                "trial_resources": {"cpus": self.cpus}}


def _named(value: Any, choices: tuple[str, ...], where: str, problems: list[str]) -> tuple[str, dict[str, Any]]:
    """``name`` or ``{name: {options}}`` -> (name, options)."""
    if isinstance(value, str):
        name, options = value, {}
    elif isinstance(value, dict) and len(value) == 1:
        name, options = next(iter(value.items()))
        options = options or {}
    else:
        problems.append(f"{where}: expected one of {', '.join(choices)} (optionally {{name: {{options}}}}), "
                        f"got {value!r}")
        return choices[0], {}
    if name not in choices:
        problems.append(f"{where}: unknown {where} {name!r}; expected one of {', '.join(choices)}")
    elif not isinstance(options, dict):
        problems.append(f"{where}.{name}: options must be a mapping, got {options!r}")
        options = {}
    return name, options


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _domain(key: str, spec: Any, problems: list[str]) -> Domain | None:
    where = f"search_space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        problems.append(f"{where}: expected one domain, e.g. {{uniform: [0.0, 1.0]}}; one of {', '.join(DOMAINS)}")
        return None
    kind, args = next(iter(spec.items()))
    if kind not in DOMAINS:
        close = difflib.get_close_matches(str(kind), DOMAINS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{where}: unknown domain {kind!r}{hint}; expected one of {', '.join(DOMAINS)}")
        return None
    if not isinstance(args, list) or not args:
        problems.append(f"{where}.{kind}: expected a non-empty list, got {args!r}")
        return None
    if kind in ("uniform", "loguniform", "randint"):
        if len(args) != 2 or not all(_number(a) for a in args) or not args[0] < args[1]:
            problems.append(f"{where}.{kind}: expected [low, high] numbers with low < high, got {args!r}")
            return None
        if kind == "loguniform" and args[0] <= 0:
            problems.append(f"{where}.loguniform: low must be > 0, got {args[0]}")
            return None
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            problems.append(f"{where}.randint: expected integers [low, high), got {args!r}")
            return None
    return Domain(kind, tuple(args))


def load_sweep(path: str | Path, storage_path: str | None = None, overrides: Sequence[str] = ()) -> Sweep:
    """Read and validate a sweep file; ``storage_path`` overrides the file's, and ``overrides``
    (``key=value``, e.g. ``data.root=/data/anet``) are added to its ``fixed`` values."""
    raw = read_yaml(path)
    if overrides:
        raw["fixed"] = {**(raw.get("fixed") or {}), **dict(parse_override(o) for o in overrides)}
    source = str(path)
    problems = _unknown_keys(raw)
    base = raw.get("base")
    if not isinstance(base, str) or not base:
        problems.append("base: the policy-stage config every trial starts from is required "
                        "(e.g. launch/configs/demo/policy.yaml)")
    elif not Path(base).is_file():
        problems.append(f"base: {base!r} does not exist (relative paths are from the current directory)")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        problems.append(f"fixed: expected a mapping of dotted keys to values, got {fixed!r}")
        fixed = {}
    space_raw = raw.get("search_space") or {}
    if not isinstance(space_raw, dict) or not space_raw:
        problems.append("search_space: expected a mapping of dotted keys to domains, with at least one key")
        space_raw = {}
    space = {str(k): d for k, v in space_raw.items() if (d := _domain(str(k), v, problems)) is not None}
    both = sorted(set(space) & set(fixed))
    if both:
        problems.append(f"fixed and search_space both set {', '.join(both)}")
    metric = raw.get("metric", "val/mAP")
    if metric not in METRICS:
        problems.append(f"metric: expected one of {', '.join(METRICS)} (maximised; {COST} is always minimised), "
                        f"got {metric!r}")
    searcher, searcher_options = _named(raw.get("searcher", "random"), SEARCHERS, "searcher", problems)
    scheduler, scheduler_options = _named(raw.get("scheduler", "none"), SCHEDULERS, "scheduler", problems)
    ints = _trial_counts(raw, problems)
    cpus = _trial_cpus(raw, problems)
    problems += _searcher_fits_space(searcher, space)
    name = raw.get("name") or Path(path).stem
    sweep = Sweep(source, base or "", str(name), storage_path or str(raw.get("storage_path", "runs/tune")), fixed,
                  space, str(metric), searcher, searcher_options, scheduler, scheduler_options, ints["num_samples"],
                  ints["max_concurrent_trials"], ints["max_failures"], float(cpus))
    if not problems:
        problems += _check_against_base(sweep)
    if problems:
        raise ConfigError(f"{source}: invalid sweep:\n  - " + "\n  - ".join(problems))
    return sweep


def _unknown_keys(raw: dict[str, Any]) -> list[str]:
    problems = []
    for key in raw:
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown key {key!r}{hint}; valid keys: {', '.join(_KEYS)}")
    return problems


def _trial_counts(raw: dict[str, Any], problems: list[str]) -> dict[str, int]:
    """``num_samples``, ``max_concurrent_trials`` and ``max_failures``, each its default when invalid."""
    ints = {}
    for key, default, low in (("num_samples", 1, 1), ("max_concurrent_trials", 1, 1), ("max_failures", 0, 0)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(f"{key}: expected an integer >= {low}, got {value!r}")
            value = default
        ints[key] = value
    return ints


def _trial_cpus(raw: dict[str, Any], problems: list[str]) -> float:
    resources = raw.get("trial_resources") or {}
    cpus = resources.get("cpus", 1.0) if isinstance(resources, dict) else None
    if not isinstance(resources, dict) or set(resources) - {"cpus"} or not _number(cpus) or cpus <= 0:
        problems.append(f"trial_resources: expected {{cpus: <number > 0>}}, got {resources!r}")
        return 1.0
    return float(cpus)


def _searcher_fits_space(searcher: str, space: dict[str, Domain]) -> list[str]:
    problems = []
    if searcher == "grid" and any(d.kind != "grid" for d in space.values()):
        problems.append("searcher: grid needs every search_space domain to be a grid: [values]")
    if searcher == "optuna":
        for key, d in space.items():
            if d.kind == "grid":
                problems.append(f"search_space.{key}: grid domains need searcher random or grid, not optuna")
            elif d.kind == "choice" and not all(v is None or isinstance(v, (bool, int, float, str)) for v in d.values):
                problems.append(f"search_space.{key}: optuna chooses among numbers or strings only, "
                                f"got {list(d.values)}")
    return problems


def _check_against_base(sweep: Sweep) -> list[str]:
    """Each domain value applied to the base (with ``fixed``) must give a valid policy config."""
    try:
        data = sweep.base_config()
        base = sweep.trial_config({}, data)
    except ConfigError as e:
        return [f"base/fixed: {e}"]
    problems = []
    for key, domain in sweep.space.items():
        for value in domain.probes():
            try:
                sweep.trial_config({key: value}, data)
            except ConfigError as e:
                problems.append(f"search_space.{key}: value {value!r} is not valid for the base config: "
                                + str(e).splitlines()[-1].strip(" -"))
                break
    options = sweep.scheduler_options
    if sweep.scheduler == "asha":
        unknown = set(options) - {"grace_period", "reduction_factor"}
        grace, factor = options.get("grace_period", 1), options.get("reduction_factor", 2)
        if unknown:
            problems.append(f"scheduler.asha: unknown options {sorted(unknown)}; known: grace_period, reduction_factor")
        if not isinstance(grace, int) or not 1 <= grace <= base.optim.epochs:
            problems.append("scheduler.asha.grace_period: expected an integer in "
                            f"[1, optim.epochs={base.optim.epochs}], got {grace!r}")
        if not _number(factor) or factor <= 1:
            problems.append(f"scheduler.asha.reduction_factor: expected a number > 1, got {factor!r}")
    allowed = {"grid": set()}.get(sweep.searcher, {"seed"})
    if set(sweep.searcher_options) - allowed:
        problems.append(f"searcher.{sweep.searcher}: unknown options {sorted(set(sweep.searcher_options) - allowed)}; "
                        f"known: {', '.join(sorted(allowed)) or 'none'}")
    return problems
