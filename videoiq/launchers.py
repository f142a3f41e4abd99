"""The command lines of the ``ray job submit`` entry points (``launch/<stage>.py``, ``launch/pipeline.py``,
``launch/tune.py``) and of ``videoiq run``, ``videoiq pipeline`` and ``videoiq tune run``, which take the same
arguments: parsing, then :func:`videoiq.dispatch.run_config`, :func:`videoiq.pipeline.run_pipeline` or the sweep,
inside the one error handler (:func:`videoiq.errors.run_guarded`).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

from .config import load_config
from .dispatch import run_config
from .errors import run_guarded
from .logs import configure_logging
from .pipeline import PIPELINE, run_pipeline


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE [--set KEY=VALUE ...]``: the arguments of ``videoiq run`` and ``launch/<stage>.py``."""
    parser.add_argument("--config", required=True, help="stage YAML (launch/configs/...)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides, values in YAML")


def run_stage_command(args: argparse.Namespace, stage: str | None = None) -> int:
    """Run the stage of ``args.config`` (which must be ``stage``'s, when given); print its checkpoint and metrics."""
    result = run_config(load_config(args.config, args.set, stage))
    print(json.dumps({"checkpoint": result["checkpoint"], "metrics": result["metrics"]}, indent=1))
    return 0


def stage_main(stage: str, argv: Sequence[str] | None = None) -> int:
    """``launch/<stage>.py --config FILE [--set KEY=VALUE ...]``: the ``ray job submit`` entry point of a stage."""
    return _launch(f"launch/{stage}.py", f"Run the {stage} stage of VideoIQ.", add_stage_arguments,
                   lambda args: run_stage_command(args, stage), argv)


def guard(body: Callable[[], int]) -> int:
    """A launcher's body with logging configured and the one error handler (:func:`videoiq.errors.run_guarded`)."""
    configure_logging()
    return run_guarded(body)


def _launch(prog: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
            command: Callable[[argparse.Namespace], int], argv: Sequence[str] | None) -> int:
    """Parse ``argv`` with ``add_arguments``'s parser, then run ``command`` on the result inside :func:`guard`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return guard(lambda: command(args))


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """``--fp F --ap A --policy-pretrain P --policy Q --eval E [--set ...]``: ``videoiq pipeline``'s and
    ``launch/pipeline.py``'s arguments."""
    for name in PIPELINE:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, help=f"the {name} stage YAML")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides applied to every stage")


def run_pipeline_command(args: argparse.Namespace) -> int:
    """Run the pipeline of ``args`` (from :func:`add_pipeline_arguments`); it prints the table itself."""
    run_pipeline({s: getattr(args, s) for s in PIPELINE}, args.set)
    return 0


def pipeline_main(argv: Sequence[str] | None = None) -> int:
    """``launch/pipeline.py ...``: the ``ray job submit`` entry point of the whole pipeline."""
    return _launch("launch/pipeline.py", "Run fp -> ap, policy_pretrain, policy, eval.", add_pipeline_arguments,
                   run_pipeline_command, argv)


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sweep FILE [--storage-path DIR] [--set KEY=VALUE ...]``: ``videoiq tune run``'s and ``launch/tune.py``'s
    arguments."""
    parser.add_argument("--sweep", required=True, help="sweep YAML (tune_configs/...)")
    parser.add_argument("--storage-path", help="where experiments live (default: the sweep file's storage_path)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="values fixed for every trial (added to the sweep's fixed:), e.g. data.root=/data/anet")


def run_sweep_command(args: argparse.Namespace) -> int:
    """Run (or continue) the sweep of ``args`` (from :func:`add_sweep_arguments`); it prints its report."""
    from .ray.tune import run_sweep
    from .sweeps.spec import load_sweep

    run_sweep(load_sweep(args.sweep, args.storage_path, args.set), run_config)
    return 0


def tune_main(argv: Sequence[str] | None = None) -> int:
    """``launch/tune.py --sweep FILE ...``: the ``ray job submit`` entry point of a Tune sweep."""
    return _launch("launch/tune.py", "Run (or continue) a Ray Tune sweep of the policy stage.", add_sweep_arguments,
                   run_sweep_command, argv)
