"""videoiq: VideoIQ (Sun et al., ICCV 2021) dynamic network quantization for video, on Ray.

The core (``quant``, ``models``, ``flops``, ``config``, ``legacy``, ``data``) is plain PyTorch and
never imports Ray; the Ray Train/Tune layer sits at the edge. Names below are imported lazily so
``import videoiq`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

_EXPORTS = {
    "create_model": "videoiq.models",
    "list_models": "videoiq.models",
    "load_config": "videoiq.config",
    "default_config": "videoiq.config",
    "set_bit_width": "videoiq.quant",
    "bit_width": "videoiq.quant",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'videoiq' has no attribute {name!r}")
