"""The dict -> dataclass engine behind every config: type checks and conversions against the annotations,
unknown keys named with the nearest valid one, and :class:`ConfigError` (no schema here).

:func:`build` makes a dataclass from a mapping, recursing into nested dataclasses, tuples, dicts, unions and
``Literal`` choices, and gathers every unknown key and wrong type before it raises one :class:`ConfigError`
listing them (with the class's own checks, when it runs any on construction); a class with
``MERGE_SECTION_DEFAULTS`` gets each given section merged over that class's own default for it. :func:`plain`
goes back.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from ..errors import VideoiqError


class ConfigError(VideoiqError, ValueError):
    """A config file, key or value that is not valid; the message names where and what was expected.

    ``problems`` are its findings one by one (``"<dotted key>: <what is wrong>"``), for a caller that gathers
    every problem of a config before it reports them."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


def suggest(key: str, options: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def coerce(value: Any, tp: Any, where: str, problems: list[str] | None = None) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert containers; raise ConfigError. A dataclass
    value's own fields are checked into ``problems`` (when given) rather than raised one at a time."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, where, problems)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, where, problems)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        return _coerce_dict(value, args, where)
    return _coerce_scalar(value, tp, where)


def _coerce_union(value: Any, args: tuple[Any, ...], where: str, problems: list[str] | None) -> Any:
    if value is None and type(None) in args:
        return None
    inner = [a for a in args if a is not type(None)]
    errors = []
    for a in inner:
        try:
            return coerce(value, a, where, problems)
        except ConfigError as e:
            errors.append(e)
    raise errors[0]


def _coerce_dict(value: Any, args: tuple[Any, ...], where: str) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    key_tp, val_tp = args
    out = {}
    for k, v in value.items():
        if key_tp is int and isinstance(k, str) and k.strip().lstrip("-").isdigit():
            k = int(k)
        out[coerce(k, key_tp, f"{where} key {k!r}")] = coerce(v, val_tp, f"{where}[{k!r}]")
    return out


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string, so numeric strings are accepted here.
        number = _as_float(value)
        if number is None or not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")


def build(cls: type, data: Mapping[str, Any], where: str, problems: list[str] | None = None) -> Any:
    """``cls`` from ``data``. Every unknown key and wrong value is recorded (the field keeps its default) and,
    unless the caller gathers them in ``problems``, raised at the end as one :class:`ConfigError`."""
    gathered: list[str] = [] if problems is None else problems
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    data = dict(data)
    for k in [k for k in data if k not in fields]:
        del data[k]
        gathered.append(f"{prefix}{k}: unknown key{suggest(str(k), fields, prefix)} Valid keys: {', '.join(fields)}")
    if getattr(cls, "MERGE_SECTION_DEFAULTS", False):
        # A section given in a file is merged over the *stage's* defaults for that section (a
        # policy YAML that sets only optim.epochs keeps the policy's own learning rates).
        for name, value in data.items():
            factory = fields[name].default_factory
            if isinstance(value, Mapping) and factory is not dataclasses.MISSING:
                data[name] = {**plain(factory()), **value}
    kwargs = {}
    for k, v in data.items():
        try:
            kwargs[k] = coerce(v, hints[k], f"{prefix}{k}", gathered)
        except ConfigError as e:
            gathered.extend(e.problems)
    try:
        obj = cls(**kwargs)
    except ConfigError as e:  # the class's own checks (a stage config validates itself)
        gathered.extend(e.problems)
        obj = None
    if problems is None and gathered:
        raise ConfigError("\n  - ".join(["invalid config:", *gathered]), gathered)
    return obj


def plain(value: Any) -> Any:
    """Dataclasses as dicts and tuples as lists, all the way down: what YAML, JSON and checkpoints hold."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
