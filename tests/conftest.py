"""Test-session settings (no network for wandb, no Ray usage stats), seeds, and shared tiny datasets."""
import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster; no token file written
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # reports in ~0.2 s instead of ~2 s

import pytest  # noqa: E402
import torch  # noqa: E402

from videoiq.data.synthetic import SynthConfig, write_synthetic  # noqa: E402

from helpers import QUIET, TINY_POLICY, stage_config  # noqa: E402

TINY = SynthConfig(num_classes=4, train_per_class=4, val_per_class=2, min_frames=8, max_frames=12, size=32)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_videos(tmp_path_factory):
    """The generated set at 32 px written as mp4 files and converted: 16 train and 8 val videos, 4 classes."""
    out = tmp_path_factory.mktemp("tiny_videos")
    write_synthetic(str(out), TINY, source="videos", stream=open(os.devnull, "w"))
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (4 logical CPUs, so Train workers leave room for Ray Data),
    with its dashboard at an address every process of the cluster is told.

    Ray Train's PlacementGroupCleaner asks the dashboard's state API whether the run's controller is alive,
    and the end of every Train run waits up to 12 s for that query to return. Without a dashboard, or when
    the lookup finds another cluster's address (the one a `ray start` left in /tmp/ray/ray_current_cluster),
    the query hangs for 40 s, so each Train run took 12 s longer than it trains."""
    import ray

    from helpers import free_port

    tests = os.path.dirname(os.path.abspath(__file__))  # workers import train functions from test modules
    dashboard = free_port()
    with pytest.MonkeyPatch.context() as env:
        # set before ray.init: the raylet passes its environment on to every worker, of this and other drivers
        env.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{dashboard}")
        ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=dashboard, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": tests}})
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield ray
        ray.shutdown()


@pytest.fixture(scope="session")
def trained_stages(tiny_videos, tmp_path_factory):
    """fp -> ap, policy_pretrain, policy on tiny models, in-process, one epoch each (fp two), once per session:
    ``(runs folder, {stage: final metrics})`` with the checkpoints in ``runs/{fp,ap,pp,policy}``."""
    from videoiq.train.session import train_in_process

    runs = tmp_path_factory.mktemp("runs")
    out = {"fp": train_in_process(stage_config("fp", tiny_videos, model={"name": "resnet_tiny"}, optim={"epochs": 2}),
                           runs / "fp", printer=QUIET)}
    out["ap"] = train_in_process(stage_config("ap", tiny_videos, model={"name": "ap_resnet_tiny"},
                                       init={"backbone_checkpoint": str(runs / "fp")}), runs / "ap", printer=QUIET)
    out["policy_pretrain"] = train_in_process(stage_config("policy_pretrain", tiny_videos,
                                                           model={"name": "mobilenet_v2_tiny"}),
                                              runs / "pp", printer=QUIET)
    init = {"backbone_checkpoint": str(runs / "ap" / "checkpoint.pt"), "policy_backbone_checkpoint": str(runs / "pp")}
    out["policy"] = train_in_process(stage_config("policy", tiny_videos, policy=TINY_POLICY, init=init,
                                           optim={"policy_lr": 0.01, "policy_backbone_lr": 0.001}),
                              runs / "policy", printer=QUIET)
    return runs, out
