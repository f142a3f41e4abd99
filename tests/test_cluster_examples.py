"""The cluster examples in launch/cluster parse, and still name what exists: a launcher and its config, the package
installed on every node, run and data folders on the storage every node mounts."""
import json
import os
import shlex
from pathlib import Path

import yaml

from videoiq.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "launch" / "cluster"


def _overrides(args):
    """The KEY=VALUE words after ``--set`` in a launcher's arguments."""
    return args[args.index("--set") + 1:] if "--set" in args else []


def test_the_cluster_launcher_config_is_valid_and_installs_videoiq_on_every_node():
    import jsonschema
    import ray.autoscaler

    config = yaml.safe_load((CLUSTER / "onprem.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # what `ray up` checks first
    assert config["provider"]["type"] == "local" and len(config["provider"]["worker_ips"]) == config["max_workers"]
    assert config["file_mounts"] == {"~/videoiq": "."}  # this checkout, onto every node
    assert any('pip install' in c and '-e "$HOME/videoiq[ray]"' in c for c in config["setup_commands"])
    venv = "~/videoiq-venv/bin/"
    head, workers = config["head_start_ray_commands"][-1], config["worker_start_ray_commands"][-1]
    assert f"{venv}ray start --head" in head and f"{venv}ray start --address=$RAY_HEAD_IP:6379" in workers
    assert all("RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN_PATH=" in c for c in (head, workers))


def test_the_rayjob_runs_an_existing_launcher_and_config_with_shared_storage():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]["rayClusterSpec"]
    assert spec["authOptions"] == {"mode": "token"}
    python, launcher, *args = shlex.split(job["spec"]["entrypoint"])
    assert python == "python" and launcher.startswith("/app/")  # the image's copy of this repository
    assert (ROOT / os.path.relpath(launcher, "/app")).is_file(), launcher
    config = args[args.index("--config") + 1]
    assert (ROOT / os.path.relpath(config, "/app")).is_file(), config
    stage = Path(launcher).stem
    cfg = load_config(str(ROOT / os.path.relpath(config, "/app")), _overrides(args), stage)
    # the run folder and the data on the volume every pod mounts at the same path
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    mounts = [{m["mountPath"] for c in g["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])}
              for g in groups]
    shared = set.intersection(*mounts)
    assert shared, mounts
    for path in (cfg.run.storage_path, cfg.data.root):
        assert any(Path(path).is_relative_to(m) for m in shared), (path, shared)
    # one Train worker per worker pod
    assert cfg.ray.placement_strategy == "STRICT_SPREAD" and cfg.ray.max_failures >= 1
    assert cfg.ray.num_workers <= sum(g["minReplicas"] for g in spec["workerGroupSpecs"])
