"""One stage session on every path: a stage resumed in-process and on Ray Train says the same, and its one
epoch hook is called in the caller's process either way."""
import re

import pytest

from videoiq.dispatch import run_config

from helpers import stage_config

pytestmark = pytest.mark.ray


def _said(lines, run):
    """The lines with the run folder and every number replaced (timings and losses differ between runs)."""
    return [re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", line.replace(str(run), "<run>")) for line in lines
            if "Ray Train workers" not in line]  # the one line only the Ray path has: where it runs


def _resume(tiny_videos, storage, name, workers):
    """Run one epoch, then ask for two twice: the lines and epoch hooks of the resumed run and the no-op."""
    def cfg(epochs):
        return stage_config("fp", tiny_videos, model={"name": "resnet_tiny"}, optim={"epochs": epochs},
                            logging={"log_every": 1}, run={"storage_path": str(storage), "name": name},
                            ray={"num_workers": workers})

    run_config(cfg(1), printer=lambda line: None)
    lines, epochs = [], []
    for _ in range(2):
        run_config(cfg(2), printer=lines.append, on_epoch=lambda epoch, metrics: epochs.append(epoch))
    return _said(lines, storage / name), epochs


def test_a_resumed_stage_says_the_same_in_process_and_on_ray(ray_local, tiny_videos, tmp_path):
    said, hooked = {}, {}
    for name, workers in (("in_process", 0), ("on_ray", 1)):
        said[name], hooked[name] = _resume(tiny_videos, tmp_path, name, workers)
    assert said["in_process"][0] == "fp: resuming <run> after epoch #"
    assert any(line.startswith("fp: epoch # step #/#") for line in said["in_process"])
    assert said["in_process"][-1] == "fp: <run>/checkpoint.pt already has all # epochs; nothing to do"
    on_ray = said["on_ray"]
    assert on_ray[-1].startswith("fp: <run>/checkpoint_") and on_ray[-1].endswith("already has all # epochs; "
                                                                                   "nothing to do")
    assert said["in_process"][:-1] == on_ray[:-1]
    assert hooked == {"in_process": [2], "on_ray": [2]}
