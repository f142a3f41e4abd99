"""The README's and the docs' commands are ones that parse: every `videoiq ...` line with the command line's
own parser, every `ray job submit` with the launcher's, naming files that exist (the run itself is
tested elsewhere: the demo's pipeline on Ray in test_train_ray, a submitted job in test_job_submit)."""
import argparse
import re
import shlex
from pathlib import Path

import pytest

from videoiq.cli import build_parser
from videoiq.launchers import add_pipeline_arguments, add_stage_arguments, add_sweep_arguments

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(page: Path) -> list[str]:
    """The shell commands in a page's ```bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" # ")[0].strip()
            if command and not command.startswith("#"):
                out.append(command)
    return out


def _args(command: str) -> list[str]:
    return shlex.split(command.replace("$PWD", str(ROOT)))


def _exists(path: str) -> bool:
    return (ROOT / path).exists() or Path(path).exists()


def _videoiq_commands(page: Path) -> list[str]:
    return [c for c in _commands(page) if c.startswith("videoiq ")]


PAGES_WITH_COMMANDS = [p for p in PAGES if _videoiq_commands(p)]


def test_the_pages_that_show_commands_are_the_ones_checked():
    """Pages without a `videoiq` command are not test cases; the README and the main reference pages must be."""
    names = {p.name for p in PAGES_WITH_COMMANDS}
    assert {"README.md", "data.md", "stages.md"} <= names, names


@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS, ids=lambda p: p.name)
def test_every_videoiq_command_parses(page):
    parser = build_parser()
    for command in _videoiq_commands(page):
        args = _args(command)[1:]
        try:
            parsed = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{page.name}: `{command}` does not parse")
        for name in ("config", "sweep", "fp", "ap", "policy_pretrain", "policy", "eval"):
            value = getattr(parsed, name, None)
            if isinstance(value, str) and value.startswith(("launch/", "tune_configs/")):
                assert _exists(value), f"{page.name}: `{command}` names {value}, which is not in the repository"


def test_ray_job_submit_commands_name_the_venv_python_and_parse():
    submits = [(p, c) for p in PAGES for c in _commands(p) if c.startswith("ray job submit")]
    assert submits, "no `ray job submit` example found"
    for page, command in submits:
        args = _args(command)
        entry = args[args.index("--") + 1:]
        # `python` alone is whatever the head's PATH finds, which need not have videoiq
        assert entry[0].endswith("/.venv/bin/python"), f"{page.name}: `{command}` runs {entry[0]}"
        script = entry[1]
        assert _exists(script), f"{page.name}: {script} is not in the repository"
        if script == "launch/infer.py":  # the `videoiq infer` command line
            try:
                build_parser().parse_args(["infer", *entry[2:]])
            except SystemExit:
                pytest.fail(f"{page.name}: `{command}` does not parse")
            continue
        parser = argparse.ArgumentParser(exit_on_error=False)
        if script == "launch/pipeline.py":
            add_pipeline_arguments(parser)
        elif script == "launch/tune.py":
            add_sweep_arguments(parser)
        else:
            add_stage_arguments(parser)
        parsed = parser.parse_args(entry[2:])
        for value in vars(parsed).values():
            if isinstance(value, str) and value.startswith(("launch/", "tune_configs/")):
                assert _exists(value), f"{page.name}: `{command}` names {value}, which is not in the repository"
