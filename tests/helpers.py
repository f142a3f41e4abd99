"""Small helpers shared by the test modules (tiny stage configs)."""
from videoiq.config import config_from_dict

QUIET = lambda line: None  # noqa: E731
TINY_POLICY = {"model": "policy_mobilenet_v2_tiny", "hidden_size": 32, "input_size": 32, "skip_choices": [1]}


def stage_config(stage, root, **sections):
    """A tiny in-process stage config on the generated set (4 frames at 32 px, one epoch)."""
    data = {"dataset": "custom", "root": str(root), "num_frames": 4, "input_size": 32, "batch_size": 8,
            "num_workers": 0}
    base = {"stage": stage, "data": data, "optim": {"epochs": 1, "lr": 0.05}, "ray": {"num_workers": 0}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return config_from_dict(base)
