"""The package as a non-editable install sees it: a wheel built from the sources holds every module, and, installed
into a fresh environment and run from outside the repository, its commands work (an editable install or
``ray job submit --working-dir .`` would hide a package folder the wheel leaves out)."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "launch" / "configs" / "demo"


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel of a copy of the sources (the build leaves its build/ and egg-info there, not in the repository)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "videoiq", src / "videoiq", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md", "pyproject.toml"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(out), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = out.glob("videoiq-*.whl")
    return wheel


def test_the_wheel_holds_every_module_and_its_commands_run_installed(tmp_path, tiny_videos):
    wheel = _build_wheel(tmp_path)
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "videoiq").rglob("*.py")}
    with zipfile.ZipFile(wheel) as z:
        held = {n for n in z.namelist() if n.startswith("videoiq/")}
    assert modules - held == set(), "modules the wheel leaves out"
    assert "videoiq/sweeps/spec.py" in held

    # a fresh environment that finds torch, Ray and the rest in the test environment's site-packages (offline)
    # but videoiq only in the wheel: a path in a .pth file comes after the environment's own site-packages,
    # and the test environment's .pth files (its editable videoiq) are not read from there
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, text=True)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": ""}
    where = subprocess.run([str(python), "-c", "import videoiq, videoiq.sweeps.spec, videoiq.ray.tune; "
                            "print(videoiq.__file__)"], cwd=outside, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.strip().startswith(str(site)), where.stdout  # the wheel's copy, not the repository's

    videoiq = str(env_dir / "bin" / "videoiq")
    tune = subprocess.run([videoiq, "tune", "--help"], cwd=outside, env=env, capture_output=True, text=True)
    assert tune.returncode == 0 and "report" in tune.stdout, tune.stderr[-2000:]
    stage = subprocess.run(
        [videoiq, "run", "--config", str(DEMO / "fp.yaml"), "--set", f"data.root={tiny_videos}", "data.num_frames=4",
         "optim.epochs=1", "optim.bn_recalibration=0", "ray.num_workers=0", f"run.storage_path={tmp_path / 'runs'}"],
        cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert stage.returncode == 0, stage.stdout[-2000:] + stage.stderr[-2000:]
    assert (tmp_path / "runs" / "fp" / "checkpoint.pt").is_file() and '"epoch": 1.0' in stage.stdout
