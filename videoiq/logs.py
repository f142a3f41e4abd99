"""The ``videoiq`` logger's one console handler, installed by the entry points.

Library modules only call ``logging.getLogger("videoiq.<part>")``. The CLI, the launchers, each Ray Train
worker and each Tune trial call :func:`configure_logging` once, so that weight-load reports and warnings
reach the console: rank 0 at INFO, the other ranks their warnings only. Ray and wandb configure their own
loggers (and sometimes the root logger); this handler sits on ``videoiq`` alone and does not propagate, so
no line is printed twice. In Ray processes, whose output Ray does not forward (``log_to_driver=False``), the
handler is a relay to the process that started them (:class:`videoiq.ray.relay.Relay`).
"""
from __future__ import annotations

import logging
import sys

_MARK = "_videoiq_console"


def configure_logging(rank: int = 0, handler: logging.Handler | None = None) -> logging.Logger:
    """Give the ``videoiq`` logger its one console handler (stderr, or ``handler`` in its place) and the level
    for ``rank``."""
    logger = logging.getLogger("videoiq")
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    if handler is not None:
        for old in [h for h in logger.handlers if getattr(h, _MARK, False)]:
            logger.removeHandler(old)
    if not any(getattr(h, _MARK, False) for h in logger.handlers):
        if handler is None:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("videoiq: %(message)s"))
        setattr(handler, _MARK, True)
        logger.addHandler(handler)
        logger.propagate = False
    return logger
