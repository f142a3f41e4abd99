"""The ``videoiq`` logger's one console handler, installed by the entry points.

Library modules only call ``logging.getLogger("videoiq.<part>")``. The CLI, the launchers, each Ray Train
worker and each Tune trial call :func:`configure_logging` once, so that weight-load reports and warnings
reach the console: rank 0 at INFO, the other ranks their warnings only. Ray and wandb configure their own
loggers (and sometimes the root logger); this handler sits on ``videoiq`` alone and does not propagate, so
no line is printed twice. :func:`quiet_ray_train_reports` drops the two lines Ray Train logs for every
report of a worker (the epoch line says the same), where Ray lets a worker's logging be set.
"""
from __future__ import annotations

import logging
import sys

_MARK = "_videoiq_console"


def configure_logging(rank: int = 0) -> logging.Logger:
    """Give the ``videoiq`` logger a stderr handler (once per process) and the level for ``rank``."""
    logger = logging.getLogger("videoiq")
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    if not any(getattr(h, _MARK, False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("videoiq: %(message)s"))
        setattr(handler, _MARK, True)
        logger.addHandler(handler)
        logger.propagate = False
    return logger


# Ray Train's modules that log "Reporting training result ..." and "Checkpoint successfully created ..."
_RAY_TRAIN_REPORTS = ("ray.train.v2._internal.execution.context", "ray.train.v2._internal.execution.storage")


def quiet_ray_train_reports() -> None:
    """In a Ray Train worker: only warnings from the loggers that announce each report and checkpoint."""
    import importlib

    for name in _RAY_TRAIN_REPORTS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # another Ray version: its lines stay
            continue
        # one of them names its logger after the module, the other after its file
        for logger in (name, getattr(module, "__file__", None)):
            if logger:
                logging.getLogger(logger).setLevel(logging.WARNING)
