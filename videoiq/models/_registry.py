"""The model registry: builder functions registered by name, created with ``create_model``.

Builders are plain functions with typed keyword arguments (timm/torchvision style), so a typo in a
keyword is a ``TypeError`` at the call, never a silently ignored option.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from ..errors import UnknownNameError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_KINDS: dict[str, str] = {}

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


def register_model(kind: str) -> Callable[[Builder], Builder]:
    """Decorator: register a builder under its function name.

    Args:
        kind: what the model is for: ``"recognition"`` (TSN backbones trained in the fp/ap/
            policy_pretrain stages) or ``"policy"``.
    """

    def wrap(fn: Builder) -> Builder:
        if fn.__name__ in _BUILDERS:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _BUILDERS[fn.__name__] = fn
        _KINDS[fn.__name__] = kind
        return fn

    return wrap


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Registered model names matching a glob ``pattern`` (and ``kind`` if given), sorted."""
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern) and (kind is None or _KINDS[n] == kind))


def model_kind(name: str) -> str:
    """The ``kind`` a model was registered with."""
    _check_name(name)
    return _KINDS[name]


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, list(_BUILDERS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown model {name!r}{hint} Registered: {', '.join(list_models())}")


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name; keyword arguments go to its builder."""
    _check_name(name)
    return _BUILDERS[name](**kwargs)
