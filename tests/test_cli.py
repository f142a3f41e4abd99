"""The ``videoiq`` command line: outputs and one-line errors."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from videoiq.cli import main

from legacy_commands import command

ROOT = Path(__file__).resolve().parents[1]
AP_YAML = str(ROOT / "launch" / "configs" / "ap_r50-b32-4-2_activitynet.yaml")


def test_config_show_applies_overrides(capsys):
    assert main(["config", "show", AP_YAML, "--set", "optim.lr=0.5"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["stage"] == "ap" and shown["optim"]["lr"] == 0.5


def test_config_errors_are_one_line_with_exit_code_2(capsys):
    assert main(["config", "show", AP_YAML, "--set", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("videoiq: error: --set 'optim.lrr=1': unknown key") and "Traceback" not in err
    assert main(["config", "show", AP_YAML, "--check-inputs"]) == 2
    assert "data.root: not set" in capsys.readouterr().err


def test_config_defaults_prints_a_loadable_config(capsys, tmp_path):
    assert main(["config", "defaults", "policy"]) == 0
    (tmp_path / "p.yaml").write_text(capsys.readouterr().out)
    assert main(["config", "show", str(tmp_path / "p.yaml")]) == 0


def test_legacy_from_file_and_flags(capsys, tmp_path):
    cmd = tmp_path / "cmd.txt"
    cmd.write_text(command("ap"))
    out_yaml = tmp_path / "ap.yaml"
    assert main(["config", "legacy", "--file", str(cmd), "--out", str(out_yaml)]) == 0
    text = capsys.readouterr().out
    assert "# --auto_resume: always on" in text and "backbone_checkpoint: runs/fp/checkpoint.pt" in text
    assert main(["config", "show", str(out_yaml)]) == 0
    capsys.readouterr()
    assert main(["config", "legacy", "--", "--dataset", "activitynet", "--backbone_net", "resnet", "--swap"]) == 2
    assert "unknown flag '--swap'" in capsys.readouterr().err


def test_models_and_flops(capsys):
    assert main(["models", "ap_*"]) == 0
    assert "ap_resnet50" in capsys.readouterr().out
    assert main(["flops", "--backbone", "ap_resnet_tiny", "--policy", "policy_mobilenet_v2_tiny",
                 "--frames", "4", "--size", "32", "--classes", "5", "--skips", "1"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n{a}" in out for a in ("32bit", "4bit", "2bit", "skip1"))


@pytest.mark.slow
def test_paper_column_for_the_paper_setting(capsys):
    assert main(["flops"]) == 0
    out = capsys.readouterr().out
    assert "paper formula" in out and "66.66" in out and "18.78" in out and "6.81" in out


def _modules_outside_the_ray_layer():
    import videoiq

    root = Path(videoiq.__file__).parent
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] not in ("ray", "bench"):
            yield path, ".".join(("videoiq", *rel.with_suffix("").parts)).removesuffix(".__init__")


@pytest.mark.slow
def test_only_the_ray_package_imports_ray():
    """Nothing outside ``videoiq/ray/`` (and the ``bench/`` commands that measure Ray Data) names Ray in an
    import, not even inside a function; and importing every such module, and building a model, loads no Ray."""
    import ast

    modules = list(_modules_outside_the_ray_layer())
    assert len(modules) > 30  # the walk found the package
    for path, _ in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not any(n == "ray" or n.startswith("ray.") for n in names), f"{path}:{node.lineno} imports Ray"
    code = ("import sys, importlib, videoiq; "
            f"[importlib.import_module(m) for m in {[m for _, m in modules if not m.endswith('__main__')]!r}]; "
            "videoiq.create_model('resnet_tiny'); "
            "bad = [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "videoiq", "models", "resnet_tiny"], capture_output=True, text=True)
    assert done.returncode == 0 and "resnet_tiny" in done.stdout


def test_logging_is_configured_once_and_by_rank():
    script = ("import logging; from videoiq.logs import configure_logging; configure_logging(); configure_logging(); "
              "logging.getLogger('videoiq.train').info('loaded 12 tensors'); configure_logging(rank=1); "
              "logging.getLogger('videoiq.data').info('hidden on other ranks'); "
              "logging.getLogger('videoiq.data').warning('skipping bad record')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "videoiq: loaded 12 tensors\nvideoiq: skipping bad record\n"
