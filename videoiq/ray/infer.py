"""``videoiq infer`` on Ray Data: a policy checkpoint over a whole video collection, results as Parquet.

The pipeline (one Ray Data execution over the videos the output folder does not hold yet)::

    read + decode (CPU tasks)  ->  map_batches(Classifier) (an actor pool)  ->  the driver writes Parquet parts

* **Read + decode**: a split (LMDB or sharded) goes through :func:`.data.clip_dataset` in evaluation mode,
  shards read on the nodes that hold them; video files are dealt into blocks of a few paths and decoded by
  :func:`videoiq.infer.decode_files`, as ``predict`` decodes them. A video that cannot be read is a row with its
  error, never the end of the run.
* **Model**: :class:`videoiq.infer.Classifier` in ``--actors`` actors of ``--actor-cpus`` CPUs (and a GPU each
  with ``--device cuda``), batches of ``--batch-size`` videos per call. Ray Data restarts an actor that dies and
  runs its lost batches again (``max_restarts`` and ``max_task_retries`` -1, its defaults for actor pools).
* **Output**: the driver turns each result batch into rows and writes a part file every ``flush_rows`` rows or
  ``flush_seconds`` seconds (each whole, by rename), keeping each key once; a run that stops loses at most the
  unwritten rows, and the same command goes on from the parts there. ``summary.json`` is computed from every
  part when the run ends.

Without ``RAY_ADDRESS`` it starts a local Ray, as the stages do (:func:`.train.connect`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import ray

from .._version import __version__
from ..errors import UsageError
from ..infer import (
    Classifier,
    Collection,
    ResultsFolder,
    decode_files,
    open_collection,
    publish,
    result_rows,
    summarize,
)
from ..predict import load_policy
from ..progress import Progress
from ..tracking import check_mode, resolve_mode
from .data import READ_TASKS_PER_CPU, _settle, clip_dataset
from .train import connect

VIDEOS_PER_BLOCK = 8


def default_actors(device: str, actor_cpus: float) -> int:
    """One actor per GPU with ``cuda``; on CPUs, three quarters of the cluster's CPUs in actors (the rest decode)."""
    have = ray.cluster_resources()
    if device.startswith("cuda"):
        return max(1, int(have.get("GPU", 0)))
    return max(1, int(have.get("CPU", 1) * 3 / 4 // actor_cpus))


def _check_resources(device: str, actors: int, actor_cpus: float) -> None:
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if device.startswith("cuda") and actors > gpus:
        raise UsageError(f"--actors {actors} with --device {device}: the Ray cluster has {gpus:g} GPUs (one an actor)")
    if actors * actor_cpus >= cpus:
        raise UsageError(f"--actors {actors} x --actor-cpus {actor_cpus:g} takes all of the Ray cluster's {cpus:g} "
                         "CPUs; decoding needs at least one (use fewer actors)")


def _dataset(collection: Collection, todo: list[int], spec: Any, read_tasks: int) -> ray.data.Dataset:
    if collection.kind == "split":
        return clip_dataset(collection.path, spec, shuffle=False, positions=todo, errors=True)
    items = [{"index": i, "path": collection.files[i]} for i in todo]
    blocks = max(1, min(read_tasks, -(-len(items) // VIDEOS_PER_BLOCK)))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    return _settle(ds.map_batches(decode_files, fn_kwargs={"spec": spec}, batch_format="numpy"), None)


def infer_collection(checkpoint: str, source: str, out: str, *, engine: str = "float", device: str = "cpu",
                     actors: int = 0, actor_cpus: float = 1.0, batch_size: int = 8,
                     printer: Callable[[str], None] = print, forced: list[str] | None = None, dense_fp: bool = False,
                     flush_rows: int = 1000, flush_seconds: float = 30.0, wandb: str = "disabled") -> dict[str, Any]:
    """Classify every video of ``source`` not yet in ``out`` with the policy ``checkpoint``; returns the summary.
    A bad checkpoint, source or output folder is one error before any work starts. ``forced`` and ``dense_fp``:
    see :class:`~videoiq.infer.Classifier` (benchmarks). ``wandb``: a ``--wandb`` setting (auto, online, offline,
    disabled) for :func:`~videoiq.infer.publish`."""
    if batch_size < 1:
        raise UsageError(f"--batch-size: expected >= 1, got {batch_size}")
    if flush_rows < 1:
        raise UsageError(f"--part-size: expected >= 1, got {flush_rows}")
    if actor_cpus <= 0:
        raise UsageError(f"--actor-cpus: expected > 0, got {actor_cpus}")
    mode = resolve_mode(wandb)
    check_mode(mode, "--wandb")
    policy = load_policy(checkpoint, device, engine)
    collection = open_collection(source, policy.classes)
    spec = dataclasses.replace(policy.spec, on_error="skip")
    settings = {"checkpoint": policy.identity["id"], "checkpoint_path": policy.identity["path"], "engine": engine,
                "input": os.path.abspath(source), "input_fingerprint": collection.fingerprint, "dense_fp": dense_fp,
                "forced": forced, "classes": policy.classes, "actions": list(policy.model.actions),
                "frames": spec.frames, "input_size": spec.size, "videoiq": __version__}
    folder = ResultsFolder(out, settings)
    with folder:
        done = folder.done_keys()
        todo = [i for i, key in enumerate(collection.keys) if key not in done]
        printer(f"infer: {len(collection.keys)} videos in {source}" + (f", {len(done)} already in {out}" if done
                                                                         else "") + f"; {len(todo)} to classify")
        run: dict[str, Any] = {}
        if todo:
            connect(printer=printer)
            # no more actors than batches: an idle actor holds its CPUs (or GPU) for nothing
            actors = min(actors or default_actors(device, actor_cpus), -(-len(todo) // batch_size))
            _check_resources(device, actors, actor_cpus)
            run = _run(collection, todo, spec, folder, checkpoint, engine, device, actors, actor_cpus, batch_size,
                       forced, dense_fp, flush_rows, flush_seconds, policy, printer)
        summary = summarize(folder, policy, run, collection.keys)
        picture = publish(folder, summary, collection, policy, mode)
    line = f"infer: {summary['videos']} videos in {out}/part-*.parquet, {summary['errors']} errors"
    if "top1" in summary:
        line += f"; top-1 {summary['top1']:.2f}%, mAP {summary['mAP']:.2f}%"
    if "gflops_per_video" in summary:
        line += f"; {summary['gflops_per_video']:.4g} GFLOPs per video (the fp model: {summary['gflops_fp_model']:.4g})"
    printer(line + f"; summary {os.path.join(out, 'summary.json')}")
    if picture is not None:
        printer(f"infer: wandb run ({mode}) in {out}/wandb, decisions picture {picture}")
    return summary


def _run(collection: Collection, todo: list[int], spec: Any, folder: ResultsFolder, checkpoint: str, engine: str,
         device: str, actors: int, actor_cpus: float, batch_size: int, forced: list[str] | None, dense_fp: bool,
         flush_rows: int, flush_seconds: float, policy: Any, printer: Callable[[str], None]) -> dict[str, Any]:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    ds = _dataset(collection, todo, spec, READ_TASKS_PER_CPU * cpus)
    gpus = 1 if device.startswith("cuda") else 0
    kwargs = {"checkpoint": os.path.abspath(checkpoint), "engine": engine, "device": device,
              "threads": max(1, int(actor_cpus)), "forced": forced, "dense_fp": dense_fp}
    # A dead actor is restarted and its batches run again: Ray Data's defaults for actor pools, said here because
    # the output's "every video once" rests on them. Remote args of their own also keep the decode stage out of the
    # actors (Ray Data fuses a task stage into the actor stage after it when their remote args match): the model
    # would otherwise wait for every decode. Ray 2.60 deprecates passing them (for Ray 2.64) but names no
    # parameter for an actor's restarts.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = _settle(ds.map_batches(Classifier, fn_constructor_kwargs=kwargs, batch_size=batch_size,
                                    compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=actor_cpus,
                                    num_gpus=gpus, max_restarts=-1, max_task_retries=-1, batch_format="numpy"), None)
    # Ray Data's INFO lines ("execution finished") and its note that progress bars are off: the progress line
    # below says it
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    printer(f"infer: {actors} model actors ({actor_cpus:g} CPUs{' and a GPU' if gpus else ''} each, engine {engine}, "
            f"batches of {batch_size}) on a Ray cluster of {cpus} CPUs")
    progress = Progress(len(todo), "infer")
    pending: dict[str, list[Any]] = {}
    written: set[str] = set()
    actor_time: dict[str, tuple[float, float]] = {}  # actor -> (seconds computing, seconds since it was ready)
    errors, start = 0, time.perf_counter()
    last_flush = start

    def flush(rows: int) -> None:
        """Write the first ``rows`` pending rows as one part."""
        nonlocal pending, last_flush
        if pending and rows:
            folder.write_part({k: v[:rows] for k, v in pending.items()})
            pending = {k: v[rows:] for k, v in pending.items()}
        last_flush = time.perf_counter()

    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for actor, b, alive in zip(batch["actor"], batch["busy"], batch["alive"], strict=True):
                actor_time[str(actor)] = (float(b), float(alive))  # cumulative: each actor's latest figures
            keep = np.array([collection.keys[i] not in written for i in batch["index"].tolist()], bool)
            if not keep.all():  # a batch a retried actor delivered twice: each key once
                batch = {k: v[keep] for k, v in batch.items()}
            rows = result_rows(batch, collection, policy, folder.settings["checkpoint"], engine)
            written.update(rows["key"])
            for k, v in rows.items():
                pending.setdefault(k, []).extend(v)
            errors += sum(1 for e in rows["error"] if e)
            progress.update(len(rows["key"]), f"{errors} errors" if errors else "")
            while len(pending["key"]) >= flush_rows:
                flush(flush_rows)
            if time.perf_counter() - last_flush >= flush_seconds:
                flush(len(pending["key"]))
    finally:
        flush(len(pending.get("key", ())))  # every row classified so far is kept: a re-run goes on from here
        progress.close()
    wall = time.perf_counter() - start
    alive = sum(a for _, a in actor_time.values())
    return {"this_run": {"videos": len(written), "seconds": wall, "videos_per_s": len(written) / wall,
                         "actors": actors, "actor_cpus": actor_cpus, "cluster_cpus": cpus,
                         "model_busy": sum(b for b, _ in actor_time.values()) / alive if alive > 0 else 0.0}}
