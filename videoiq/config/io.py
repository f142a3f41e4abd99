"""Config files and overrides: YAML in and out, and dotted ``--set key=value`` overrides checked against the
stage's schema before anything is built."""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..atomic import write_text_atomic
from ._typed import ConfigError, suggest
from .stages import STAGES, StageConfig, config_from_dict, config_to_dict, renamed_key


def _schema_check(cls: type, path: list[str], source: str) -> None:
    """Fail early, with a suggestion, when an override names a key the stage does not have."""
    tp: Any = cls
    for i, key in enumerate(path):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if not dataclasses.is_dataclass(tp) and inner:
            tp = inner[0]
        if not dataclasses.is_dataclass(tp):
            return  # inside a dict-valued field (e.g. optim.clip_lr.4): checked when building
        names = [f.name for f in dataclasses.fields(tp) if f.init]
        if key not in names:
            dotted = ".".join(path[: i + 1])
            hint = suggest(key, names, "".join(f"{p}." for p in path[:i]))
            raise ConfigError(f"{source}: unknown key {dotted!r}{hint} Valid here: {', '.join(names)}")
        tp = typing.get_type_hints(tp)[key]


def parse_override(item: str, source: str = "--set") -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value)``, the value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"{source} {item!r}: expected key=value, e.g. optim.lr=0.001")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} {item!r}: value is not valid YAML: {e}") from None


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a raw config dict; values are parsed as YAML. The first bad one raises
    (:func:`load_config` gathers them all instead)."""
    for item in overrides:
        key, value = parse_override(item, source)
        set_value(data, key, value, f"{source} {item!r}")
    return data


def set_value(data: dict[str, Any], key: str, value: Any, source: str) -> str:
    """Set the dotted ``key`` of a raw config dict to ``value``, checking the key against the stage's
    schema (``source`` names where the key came from in errors); returns the key as set (its current name,
    if it moved)."""
    stage = data.get("stage")
    cls = STAGES.get(stage) if isinstance(stage, str) else None
    key = renamed_key(key.strip(), source)
    path = key.split(".")
    if not all(path):
        raise ConfigError(f"{source}: empty key segment")
    if path == ["stage"]:
        raise ConfigError(f"{source}: the stage comes from the config file, it cannot be overridden")
    if cls is not None:
        _schema_check(cls, path, source)
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
    return key


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` (no Python objects), with file-named errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: Iterable[str] = (), stage: str | None = None) -> StageConfig:
    """Load a stage config from YAML (its ``stage:`` key picks the class) and apply ``--set`` overrides. Every
    problem, of the file and of the overrides, is reported at once, each blamed on where it was set.
    ``stage`` (a launcher's, a pipeline step's) must be the file's ``stage:``."""
    data = read_yaml(path)
    if stage is not None and data.get("stage") != stage:
        raise ConfigError(f"{path}: is a {data.get('stage')!r}-stage config; expected a {stage!r}-stage one here")
    problems, origins = [], {}
    for item in overrides:
        source = f"--set {item!r}"
        try:
            key, value = parse_override(item)
            origins[set_value(data, key, value, source)] = source
        except ConfigError as e:
            problems.append(str(e))
    return config_from_dict(data, str(path), origins, problems)


def config_changes(cfg: StageConfig) -> dict[str, Any]:
    """Only what differs from the stage's defaults, as a nested dict with ``stage`` first."""
    full = config_to_dict(cfg)
    base = config_to_dict(type(cfg)())
    out: dict[str, Any] = {"stage": cfg.STAGE}
    for key, value in full.items():
        if key == "stage" or value == base.get(key):
            continue
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = {k: v for k, v in value.items() if v != base[key].get(k)}
        else:
            out[key] = value
    return out


def dump_yaml(cfg: StageConfig, *, changes_only: bool = False) -> str:
    """The config as YAML text, sections in declaration order (or only the non-default values)."""
    data = config_changes(cfg) if changes_only else config_to_dict(cfg)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def save_config(cfg: StageConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML atomically (a crash never leaves a half-written file)."""
    return write_text_atomic(path, dump_yaml(cfg))
