"""``videoiq bench train``: samples/s of each stage's training step, bare and through Ray Train.

The step is the product's own (:func:`videoiq.train.loop.train_step` on each stage's Task: fp,
ap with every width and the teacher, policy_pretrain, policy on the frozen ap backbone), on
in-memory random clips so that only the step is timed, never data loading. It runs:

* in a bare PyTorch loop in one process (``threads`` torch threads), the reference;
* inside Ray Train workers (``TorchTrainer``, DDP over gloo or nccl), with the global batch split
  across 1 and then 2 workers and the CPUs split between them;

and prints samples/s, the Ray/bare ratio (the overhead Ray Train adds to a step) and the ap/fp step
ratio (what training every width at once costs). Optional ``--amp bf16`` and ``--channels-last`` run
the same steps with those switches (``speed.*`` in the stage configs).
"""
from __future__ import annotations

import os
import time
from typing import Any

import torch

from ..config import default_config
from ..errors import UsageError
from ..models import VideoIQ, create_model
from ..train.loop import train_step
from ..train.tasks import AnyPrecisionTask, FPTask, PolicyTask, Task
from .common import isolated, peak_memory_mib, print_table, setting_line

STAGES = ("fp", "ap", "policy_pretrain", "policy")


def build_task(stage: str, backbone: str, policy: str, classes: int) -> Task:
    """The Task a stage trains, on randomly initialised models of the given names."""
    torch.manual_seed(0)
    if stage == "fp":
        return FPTask(create_model(backbone, num_classes=classes))
    if stage == "policy_pretrain":
        return FPTask(create_model("mobilenet_v2", num_classes=classes))
    ap = create_model(f"ap_{backbone}", num_classes=classes)
    teacher = create_model(backbone, num_classes=classes)
    if stage == "ap":
        return AnyPrecisionTask(ap, (32, 4, 2), teacher)
    net = create_model(policy, num_precisions=3, skip_choices=[1], num_classes=classes)
    paper = default_config("policy")  # the paper's loss weights and temperature schedule
    return PolicyTask(VideoIQ(ap, net, teacher=teacher), paper.loss, paper.policy.temperature_init,
                      paper.policy.temperature_decay)


def _batch(batch: int, frames: int, size: int, classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    video = torch.randn(batch, frames, 3, size, size, generator=g)
    return video.to(device), torch.randint(0, classes, (batch,), generator=g).to(device)


def _prepare(task: Task, device: torch.device, channels_last: bool) -> None:
    task.module.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    task.train(True)


def _time_steps(task: Task, module: torch.nn.Module, video: torch.Tensor, label: torch.Tensor, steps: int,
                amp: str, device: str) -> float:
    """Median seconds per step after one warm-up step."""
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    times = []
    for i in range(steps + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(task, module, video, label, optimizer, amp=amp, where=f"bench step {i}")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def _bare(stage: str, cfg: dict[str, Any]) -> tuple[float, float]:
    """Seconds per step in a bare loop, and peak memory (runs in its own process)."""
    device = torch.device(cfg["device"])
    task = build_task(stage, cfg["backbone"], cfg["policy"], cfg["classes"])
    _prepare(task, device, cfg["channels_last"])
    video, label = _batch(cfg["batch"], cfg["frames"], cfg["size"], cfg["classes"], device)
    seconds = _time_steps(task, task.module, video, label, cfg["steps"], cfg["amp"], cfg["device"])
    return seconds, peak_memory_mib(cfg["device"])


def _ray_worker(cfg: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Per Ray Train worker: every stage's step on this worker's share of the batch (DDP-wrapped)."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(cfg["threads_per_worker"])
    world = ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()
    out = {}
    for stage in STAGES:
        task = build_task(stage, cfg["backbone"], cfg["policy"], cfg["classes"])
        _prepare(task, device, cfg["channels_last"])
        module = ray.train.torch.prepare_model(task.module, move_to_device=False)
        video, label = _batch(cfg["batch"] // world, cfg["frames"], cfg["size"], cfg["classes"], device)
        seconds = _time_steps(task, module, video, label, cfg["steps"], cfg["amp"], str(device))
        out[stage] = (seconds, peak_memory_mib(str(device)))
    return out


def _ray(workers: int, cfg: dict[str, Any]) -> dict[str, tuple[float, float]]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cpus = cfg["threads"] / workers
    trainer = TorchTrainer(
        _ray_worker, train_loop_config={**cfg, "threads_per_worker": max(1, int(cpus))},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=cfg["device"].startswith("cuda"),
                                     resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name=f"bench_train_{workers}w_{int(time.time())}", storage_path=cfg["storage"]))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result.return_value


def bench_train(backbone: str = "resnet18", policy: str = "policy_mobilenet_v2", frames: int = 8, size: int = 112,
                batch: int = 4, steps: int = 3, classes: int = 10, threads: int = 0, device: str = "cpu",
                ray_workers: tuple[int, ...] = (1, 2), amp: str = "off", channels_last: bool = False,
                storage: str = "") -> dict[str, dict[str, float]]:
    """Print and return the table of every stage's step, bare and through Ray Train per worker count:
    ``{stage: {"bare_samples_per_s", "peak_mib", "ray_<w>w_samples_per_s", "ray_<w>w_vs_bare" per w}}``."""
    threads = threads or torch.get_num_threads()
    if any(batch % w for w in ray_workers):
        raise UsageError(f"--batch {batch} must split evenly over {list(ray_workers)} workers")
    cfg = {"backbone": backbone, "policy": policy, "frames": frames, "size": size, "batch": batch, "steps": steps,
           "classes": classes, "threads": threads, "device": device, "amp": amp, "channels_last": channels_last,
           "storage": os.path.abspath(storage or os.path.join(os.getcwd(), "runs", "bench"))}
    print("videoiq bench train: one training step of each stage (forward, losses, backward, SGD step)")
    print(f"  backbone {backbone} (ap: ap_{backbone} + its fp teacher), policy {policy}, policy_pretrain mobilenet_v2;")
    print(f"  global batch {batch} videos x {frames} frames at {size}x{size}, {classes} classes, amp {amp}, "
          f"channels_last {channels_last}; median of {steps} steps after 1 warm-up")
    print(f"  {setting_line(device, threads)}")
    bare = {stage: isolated(_bare, stage, cfg, threads=threads) for stage in STAGES}
    ray_runs: dict[int, dict[str, tuple[float, float]]] = {}
    if ray_workers:
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(address=os.environ.get("RAY_ADDRESS") or "local", num_cpus=threads, include_dashboard=False,
                     log_to_driver=False)
        try:
            for w in ray_workers:
                ray_runs[w] = _ray(w, cfg)
        finally:
            if started:
                ray.shutdown()
    header = ["stage", "bare samples/s", "peak MiB"]
    for w in ray_workers:
        header += [f"Ray {w}w samples/s", f"Ray {w}w / bare"]
    table = {}
    for stage in STAGES:
        sec, mem = bare[stage]
        table[stage] = {"bare_samples_per_s": batch / sec, "peak_mib": mem}
        for w in ray_workers:
            ray_sec = ray_runs[w][stage][0]  # rank 0's step on its share; every rank steps together (DDP)
            table[stage].update({f"ray_{w}w_samples_per_s": batch / ray_sec, f"ray_{w}w_vs_bare": sec / ray_sec})
    print()
    rows = [[stage, f"{r['bare_samples_per_s']:.2f}", f"{r['peak_mib']:.0f}",
             *[f"{r[f'ray_{w}w_{k}']:.2f}" for w in ray_workers for k in ("samples_per_s", "vs_bare")]]
            for stage, r in table.items()]
    print_table(header, rows)
    print(f"\n  ap step / fp step (bare): {bare['ap'][0] / bare['fp'][0]:.2f}x (3 widths + the teacher)")
    if 1 in ray_runs:
        worst = min(bare[s][0] / ray_runs[1][s][0] for s in STAGES)
        print(f"  Ray Train (1 worker, {threads} CPUs) / bare loop, slowest stage: {worst:.2f}")
    return table
