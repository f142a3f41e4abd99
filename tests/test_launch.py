"""The launchers and the pipeline as a user runs them (in-process here; on Ray in test_train_ray)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from videoiq.cli import main
from videoiq.config import ConfigError
from videoiq.pipeline import run_pipeline, shared_overrides

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "launch" / "configs" / "demo"
CONFIGS = {s: str(DEMO / f"{s}.yaml") for s in ("fp", "ap", "policy_pretrain", "policy", "eval")}


@pytest.mark.slow
def test_pipeline_hands_checkpoints_on_and_prints_the_table(tiny_videos, tmp_path, capsys):
    overrides = [f"data.root={tiny_videos}", "data.num_frames=4", "optim.epochs=1", "ray.num_workers=0",
                 f"run.storage_path={tmp_path}"]
    command = ["pipeline", *(f"--{s.replace('_', '-')}={f}" for s, f in CONFIGS.items()), "--set", *overrides]
    assert main(command) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "pipeline_summary.json").read_text())
    assert summary["checkpoints"]["ap"]["path"] == str(tmp_path / "ap" / "checkpoint.pt")
    assert summary["checkpoints"]["ap"]["kept"]
    for row in ("full precision (fp)", "any-precision at 32 bits", "any-precision at 2 bits", "VideoIQ (argmax)"):
        assert row in summary["table"]
    assert summary["table"] in out and summary["eval"]["policy"]["metrics"]["val/videos"] == 8.0
    assert summary["eval"]["policy"]["checkpoint"] == str(tmp_path / "policy" / "checkpoint.pt")
    # a second run finds every stage finished and trains nothing
    again = []
    run_pipeline(CONFIGS, overrides, printer=again.append)
    assert sum("nothing to do" in line for line in again) == 4
    first_evals = {name: Path(ev["file"]) for name, ev in summary["eval"].items()}

    # two epochs: fp trains one more and so changes; ap, built on the old fp, is not "nothing to do" but refused,
    # naming the change
    more = [*overrides[:2], "optim.epochs=2", *overrides[3:]]
    assert main(["pipeline", *command[1:6], "--set", *more]) == 2
    assert re.search(r"^videoiq: error: ap: .*ap/checkpoint.pt was trained from other inputs than this config's: "
                     r"init.backbone_checkpoint fp checkpoint \w+ after epoch 1 \(.*\) -> fp checkpoint \w+ after "
                     r"epoch 2 .*run.changed_inputs=retrain", capsys.readouterr().err, re.M)
    assert json.loads((tmp_path / "pipeline_summary.json").read_text())["checkpoints"]["fp"]["kept"] is False
    # with retrain, ap and policy (built on the old ap) train again; their old runs are moved aside, not deleted
    lines = []
    retrained = run_pipeline(CONFIGS, [*more, "run.changed_inputs=retrain"], printer=lines.append)
    assert sum("training it again from scratch" in line for line in lines) == 2, lines
    assert [line.split(":")[0] for line in lines if "nothing to do" in line] == ["fp"]
    assert len(list(tmp_path.glob("ap.replaced-*/checkpoint.pt"))) == 1
    assert {s: c["epoch"] for s, c in retrained["checkpoints"].items()} == dict.fromkeys(CONFIGS.keys() - {"eval"}, 2)
    # the first pipeline's eval results were never overwritten or deleted: each checkpoint has its own folder,
    # which moves with its run when that is replaced
    for name, path in first_evals.items():
        run = path.relative_to(tmp_path).parts[0]
        kept = path if name == "fp" else next(tmp_path.glob(f"{run}.replaced-*")) / path.relative_to(tmp_path / run)
        assert json.loads(kept.read_text())["metrics"] == summary["eval"][name]["metrics"], name
    assert Path(retrained["eval"]["fp"]["file"]).parent != first_evals["fp"].parent


def _printed_result(out):
    """The JSON ``videoiq run`` prints last, after the stage's progress lines."""
    lines = out.splitlines()
    return json.loads("\n".join(lines[len(lines) - 1 - lines[::-1].index("{"):]))


@pytest.mark.slow
def test_videoiq_run_trains_a_stage_and_resumes_it(tiny_videos, tmp_path, capsys):
    common = ["--config", CONFIGS["policy_pretrain"], "--set", f"data.root={tiny_videos}", "data.num_frames=4",
              "ray.num_workers=0", f"run.storage_path={tmp_path}", "model.name=mobilenet_v2_tiny",
              "logging.log_every=1"]
    assert main(["run", *common, "optim.epochs=1"]) == 0
    out = capsys.readouterr().out
    result = _printed_result(out)
    # the progress line: step of the epoch's steps, loss, rate and time left
    assert re.search(r"^policy_pretrain: epoch 1 step 1/1 loss=\S+ lr=\S+ [\d.]+ videos/s, epoch ends in \d+ s$",
                     out, re.M), out
    assert result["checkpoint"] == str(tmp_path / "policy_pretrain" / "checkpoint.pt")
    assert result["metrics"]["epoch"] == 1
    assert main(["run", *common, "optim.epochs=2"]) == 0
    assert _printed_result(capsys.readouterr().out)["metrics"]["epoch"] == 2
    assert main(["run", *common, "data.root=" + str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("videoiq: error: inputs not ready:")


def test_shared_overrides_go_where_they_apply():
    assert shared_overrides("eval", ["optim.epochs=1", "data.root=x"]) == ["data.root=x"]
    assert shared_overrides("fp", ["optim.epochs=1", "data.root=x"]) == ["optim.epochs=1", "data.root=x"]
    with pytest.raises(ConfigError, match="no stage has a 'optm' section"):
        shared_overrides("fp", ["optm.epochs=1"])


@pytest.mark.slow
def test_a_launcher_refuses_another_stages_config():
    done = subprocess.run([sys.executable, str(ROOT / "launch" / "fp.py"), "--config", CONFIGS["ap"]],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert "ap.yaml: is a 'ap'-stage config; expected a 'fp'-stage one here" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_gpu_check_says_in_one_line_that_this_machine_has_no_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: `make gpu-check` would run for real")
    env = {"PATH": "/usr/bin:/bin", "VIDEOIQ_BIN": str(Path(sys.executable).parent),
           "GPU_CHECK_OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(ROOT / "launch" / "gpu_check.sh")], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.strip() == ("gpu-check: no CUDA device here (torch.cuda.is_available() is False); "
                                   "run it on a machine with an NVIDIA GPU")
    assert not (tmp_path / "out").exists()  # nothing started
    # every stage config takes the overrides the check's pipeline command sets
    from videoiq.config import load_config

    script = (ROOT / "launch" / "gpu_check.sh").read_text().replace("\\\n", " ")  # continuation lines joined
    overrides = [w for w in script.split("run.storage_path=$OUT/runs\"", 1)[1].split("\n", 1)[0].split() if "=" in w]
    assert "run.use_gpu=true" in overrides and "speed.amp=bf16" in overrides
    for stage in ("fp", "ap", "policy_pretrain", "policy", "eval"):
        cfg = load_config(str(DEMO / f"{stage}.yaml"), shared_overrides(stage, overrides))
        assert cfg.run.use_gpu and cfg.speed.amp == "bf16"
