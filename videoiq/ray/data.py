"""Ray Data over a videoiq LMDB: read tasks over the index, a decode+augment stage, shards per training worker.

Part of the thin Ray layer (the core under ``videoiq.data`` never imports Ray). The pipeline is

    read (LMDBVideoDatasource)  ->  map_batches(decode_batch)  ->  streaming_split per Train worker

* **Read**: the index positions are dealt into read tasks; each task opens the database once per
  process (read-only, no lock), samples each video's frame indices and emits only those frames' JPEG
  bytes, so a 3000-frame video costs 16 frames of traffic. Training order is reshuffled every time
  the dataset is executed, i.e. every epoch.
* **Decode**: :func:`videoiq.data.clips.decode_clip`, the same code as the PyTorch ``Dataset``, gives
  uint8 clips; it runs on each read block in the same task as the read (Ray fuses the two operators).
* **Seeded**: with a ``seed``, the n-th execution's order, frame indices and augmentation all come from
  ``(seed, n)`` (each video from ``(seed, n, position)``) and blocks are delivered in order (in Train
  shards too: :func:`train_data_config` carries that along), so two runs of the same config train on the
  same batches. Without one, every execution draws fresh entropy.
* **Shards**: Ray Train's ``DataConfig(datasets_to_split=["train"])`` splits the training set across
  workers (disjoint; ``equal=True`` drops at most ``world_size - 1`` rows an epoch) and gives every
  worker the whole validation set; :func:`train_data_config` builds it.
* **Sharded splits, read where they lie**: for a split of shards (``videoiq.data.shards``) the driver
  first asks every node which shards it holds (a zero-CPU task pinned to each node; a shard no node holds
  is an error naming it, before anything reads), gives each shard to one node that holds it (the least
  loaded), and builds one read+decode pipeline per node whose tasks prefer that node
  (``NodeAffinitySchedulingStrategy(soft=True)``); the pipelines are unioned, so an
  epoch still reads every video once, in an order shuffled over all of a node's shards, interleaved across
  nodes.
* **Read log**: with a ``read_log`` folder, every finished read task appends ``{"node", "execution",
  "videos", "shards"}`` to its process's file there, so which nodes read which shards in which epoch is on
  record (:func:`read_counts`, :func:`read_shards`); a stage on Ray Train keeps it in ``<run>/reads``.

A single LMDB must be at the same path on every node that runs read tasks: on a shared filesystem (NFS,
Lustre, a mounted bucket) or copied to each node. A sharded split's manifest and index must be on every
node that reads; its shards only where they are read (see ``docs/ray.md``).
"""
from __future__ import annotations

import copy
import json
import os
import socket
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray
import ray.train
import torch
from ray.data import Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..data.clips import ClipSpec, clip_indices, decode_clip, invalid_sample, primary_label
from ..data.records import DatabaseError, RecordError
from ..data.shards import ShardedSplit, VideoSet, local_path, open_split

_DBS: dict[tuple[int, str], VideoSet] = {}
PROBE_SECONDS = 120
READ_TASKS_PER_CPU = 32  # a node that cannot run a zero-CPU task in this long is not reading anything either


def _db(path: str) -> VideoSet:
    """This process's split at ``path`` (Ray reuses worker processes across tasks)."""
    key = (os.getpid(), path)
    if key not in _DBS:
        _DBS[key] = open_split(path)
    return _DBS[key]


class LMDBVideoDatasource(Datasource):
    """Rows ``{"jpeg", "sizes", "label", "index", "error"}``: one video's sampled JPEG frames per row."""

    def __init__(self, db: VideoSet | str, spec: ClipSpec, videos_per_block: int = 8, shuffle: bool | None = None,
                 positions: list[int] | None = None, seed: int | None = None, read_log: str | None = None):
        super().__init__()
        self.seed, self.executions, self.read_log = seed, 0, read_log
        # opened here, in the driver: a damaged database fails with its own message before any task runs
        db = open_split(db) if isinstance(db, str) else db
        path = db.path
        self.path, self.spec, self.videos_per_block = os.path.abspath(path), spec, videos_per_block
        self.shuffle = spec.train if shuffle is None else shuffle
        counts = db.index.num_frames
        candidates = range(len(counts)) if positions is None else positions
        self.positions = [i for i in candidates if counts[i] >= spec.min_frames]
        if not self.positions:
            raise DatabaseError(f"{path}: no videos to read (none has >= {spec.min_frames} frames)")
        mean_frame = db.nbytes / max(1, db.meta["num_frames"])
        self._row_bytes = int(mean_frame * spec.frames * spec.num_clips)

    def estimate_inmemory_data_size(self) -> int:
        return len(self.positions) * self._row_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        # Ray plans the dataset anew for every execution (epoch): the count seeds that execution
        draw = None if self.seed is None else [self.seed, self.executions]
        self.executions += 1
        rng = np.random.default_rng(draw)
        order = rng.permutation(self.positions) if self.shuffle else np.array(self.positions)
        path, spec, vpb, row_bytes = self.path, self.spec, self.videos_per_block, self._row_bytes
        log = None if self.read_log is None else (self.read_log, self.executions - 1)

        def task(part: np.ndarray) -> ReadTask:
            positions = part.tolist()  # plain ints: the closure must not capture the datasource
            return ReadTask(
                lambda: _read_rows(path, spec, positions, vpb, draw, log),
                BlockMetadata(num_rows=len(positions), size_bytes=len(positions) * row_bytes,
                              exec_stats=None, input_files=None),
                per_task_row_limit=per_task_row_limit,
            )

        parts = np.array_split(order, max(1, min(parallelism, len(order))))
        return [task(p) for p in parts if len(p)]


def _read_rows(path: str, spec: ClipSpec, positions: list[int], videos_per_block: int,
               draw: list[int] | None, read_log: tuple[str, int] | None) -> Iterator[Any]:
    db, fresh = _db(path), np.random.default_rng()
    for s in range(0, len(positions), videos_per_block):
        rows = {"jpeg": [], "sizes": [], "label": [], "index": [], "error": [], "seed": []}
        for p in positions[s:s + videos_per_block]:
            rng = fresh if draw is None else np.random.default_rng([*draw, p])
            try:
                _, jpegs = db.read(p, clip_indices(spec, db.index.num_frames[p], rng))
                error = ""
            except RecordError as e:
                if spec.on_error == "fail":
                    raise
                jpegs, error = [b""] * (spec.frames * spec.num_clips), str(e)
            rows["jpeg"].append(b"".join(jpegs))
            rows["sizes"].append(np.array([len(j) for j in jpegs], np.int32))
            rows["label"].append(primary_label(db.index.labels[p]))
            rows["index"].append(p)
            rows["error"].append(error)
            rows["seed"].append(rng.integers(2**63))  # the decode stage's augmentation draws from it
        yield BlockAccessor.batch_to_block({
            "jpeg": np.array(rows["jpeg"], dtype=object), "sizes": np.stack(rows["sizes"]),
            "label": np.array(rows["label"], np.int64), "index": np.array(rows["index"], np.int64),
            "error": np.array(rows["error"], dtype=object), "seed": np.array(rows["seed"], np.int64),
        })
    if read_log is not None:
        shards = (Counter(db.shards[db.shard_of(p)].name for p in positions) if isinstance(db, ShardedSplit)
                  else {os.path.basename(path): len(positions)})
        _log_read(*read_log, len(positions), dict(shards))


def _log_read(folder: str, execution: int, videos: int, shards: dict[str, int]) -> None:
    # One file per process (and node): a single writer per file appends safely on NFS too.
    node = ray.get_runtime_context().get_node_id()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{node}.{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps({"node": node, "execution": execution, "videos": videos, "shards": shards}) + "\n")


def _read_entries(folder: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    for file in sorted(Path(folder).glob("*.jsonl")):
        for line in file.read_text().splitlines():
            yield json.loads(line)


def read_counts(folder: str | os.PathLike[str]) -> dict[str, int]:
    """Videos read per Ray node id, over every execution, from a ``read_log`` folder ({} if there is none)."""
    counts: Counter[str] = Counter()
    for entry in _read_entries(folder):
        counts[entry["node"]] += entry["videos"]
    return dict(counts)


def read_shards(folder: str | os.PathLike[str]) -> dict[int, dict[str, dict[str, int]]]:
    """Videos read per execution (epoch), node id and shard, from a ``read_log`` folder."""
    out: dict[int, dict[str, Counter[str]]] = {}
    for entry in _read_entries(folder):
        out.setdefault(entry["execution"], {}).setdefault(entry["node"], Counter()).update(entry["shards"])
    return {n: {node: dict(c) for node, c in nodes.items()} for n, nodes in sorted(out.items())}


def decode_batch(batch: dict[str, np.ndarray], spec: ClipSpec, path: str,
                 errors: bool = False) -> dict[str, np.ndarray]:
    """The decode+augment stage: JPEG bytes to uint8 clips, ``valid`` False for skipped bad records (with
    ``errors``, each one's message in an ``error`` column)."""
    db = _db(path)
    # each clip is written straight into its slot of the block's array: no clip of its own to stack
    videos = np.empty((len(batch["index"]), *spec.sample_shape), np.uint8)
    valid, messages = np.ones(len(videos), bool), np.array([""] * len(videos), dtype=object)
    for i, (data, sizes, position, error, seed) in enumerate(zip(batch["jpeg"], batch["sizes"], batch["index"],
                                                                 batch["error"], batch["seed"], strict=True)):
        key, rng = db.index.keys[int(position)], np.random.default_rng(int(seed))
        try:
            if error:
                raise RecordError(path, key, error)
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            jpegs = [data[bounds[k]:bounds[k + 1]] for k in range(len(sizes))]
            decode_clip(spec, jpegs, rng, path, key, out=torch.from_numpy(videos[i]))
        except RecordError as e:
            if spec.on_error == "fail":
                raise
            videos[i] = invalid_sample(spec, int(position), e)["video"].numpy()
            valid[i], messages[i] = False, str(e)
    out = {"video": videos, "label": np.where(valid, batch["label"], -1), "index": batch["index"], "valid": valid}
    return {**out, "error": messages} if errors else out


def clip_dataset(db: VideoSet | str, spec: ClipSpec, videos_per_block: int = 8, read_tasks: int | None = None,
                 shuffle: bool | None = None, positions: list[int] | None = None,
                 seed: int | None = None, read_log: str | None = None, errors: bool = False) -> ray.data.Dataset:
    """A Ray Dataset of clip samples from a split (or the split at that path; see the module docstring for
    the stages); ``positions`` limits it to those videos of the index; ``seed`` makes every execution reproducible;
    ``read_log`` is a folder where the read tasks record their node (:func:`read_counts`); ``read_tasks``: per
    node reading a sharded split; ``errors``: each skipped bad record's message in an ``error`` column."""
    split = open_split(db) if isinstance(db, str) else db
    if not isinstance(split, ShardedSplit):
        return _pipeline(split, spec, videos_per_block, read_tasks, shuffle, positions, seed, read_log, errors)
    wanted = range(len(split)) if positions is None else positions
    # soft node affinity: a node's reads wait for a CPU there (a label selector with a fallback, Ray 2.60's
    # replacement, ran them on the other node while this one was busy), and go elsewhere only if it is gone
    parts = [_pipeline(split, spec, videos_per_block, read_tasks, shuffle, mine, seed, read_log, errors,
                       {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)})
             for node, mine in sorted(_positions_by_node(split, wanted, spec.min_frames).items())]
    return _settle(parts[0].union(*parts[1:]), seed) if len(parts) > 1 else parts[0]


def _pipeline(split: VideoSet, spec: ClipSpec, videos_per_block: int, read_tasks: int | None,
              shuffle: bool | None, positions: list[int] | None, seed: int | None, read_log: str | None,
              errors: bool = False, placement: dict[str, Any] | None = None) -> ray.data.Dataset:
    source = LMDBVideoDatasource(split, spec, videos_per_block, shuffle, positions, seed, read_log)
    n = len(source.positions)
    # ~64 videos a task, but at most READ_TASKS_PER_CPU a cluster CPU: Ray Data's time to the first batch grows
    # with the tasks it plans (a 100k-video split on 2 CPUs, warm: 1.9 s with 1,563 tasks, 0.8 s with 64); a
    # longer task still yields its blocks as it reads them
    cap = READ_TASKS_PER_CPU * max(1, int(ray.cluster_resources().get("CPU", 1)))
    blocks = read_tasks or min(n, max(8, min(cap, -(-n // 64))))
    # Ray 2.60 deprecates passing a scheduling strategy (for Ray 2.64), but its replacement has no soft affinity
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ray.data.read_datasource(source, override_num_blocks=blocks, ray_remote_args=placement)
        # No batch_size: decoding then runs on each read block inside the read task (Ray fuses the two, the
        # same placement letting it: a node's decode runs where that node's read does).
        ds = ds.map_batches(decode_batch, fn_kwargs={"spec": spec, "path": source.path, "errors": errors},
                            batch_format="numpy", **(placement or {}))
    return _settle(ds, seed)


def _settle(ds: ray.data.Dataset, seed: int | None) -> ray.data.Dataset:
    """This dataset's own context (not the global one): how it runs and how quietly."""
    # Ray Data reserves a share of the CPUs per operator against contention between operators; this
    # pipeline is one fused operator, and the reservation left half of a 2-CPU node idle (videoiq bench
    # data: 160 -> 270 videos/s without it).
    ds.context.op_resource_reservation_enabled = False
    # Job logs: Ray Data's progress bars and "Running Dataset" banners were most of a job's lines (thousands
    # per stage); the training loop prints its own progress and epoch lines.
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    # A bad record's own error (RecordError, naming the database, key and frame), not Ray Data's
    # "UDF failed to process a data block", whose cause does not survive the trip to the consumer.
    ds.context.raise_original_map_exception = True
    if seed is not None:  # blocks otherwise arrive in the order their tasks finish (union: round-robin)
        ds.context.execution_options.preserve_order = True
    return ds


def _positions_by_node(split: ShardedSplit, positions: Any, min_frames: int) -> dict[str, list[int]]:
    """The videos each node reads: every shard given to one node that holds it, the least loaded first."""
    holders = shard_holders(split)
    orphans = [s.name for s in split.shards if not holders[s.name]]
    if orphans:
        more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
        raise DatabaseError(f"{split.path}: {len(orphans)} shards are on no node of the Ray cluster: "
                            f"{', '.join(orphans[:5])}{more}; copy them (with {split.path}/manifest.json and "
                            "index.msgpack) to a node's copy of the split")
    counts = split.index.num_frames
    by_shard: dict[int, list[int]] = {}
    for p in positions:
        if counts[p] >= min_frames:
            by_shard.setdefault(split.shard_of(p), []).append(p)
    load: Counter[str] = Counter({node: 0 for names in holders.values() for node in names})
    out: dict[str, list[int]] = {}
    for number in sorted(by_shard, key=lambda k: (-len(by_shard[k]), k)):
        node = min(sorted(holders[split.shards[number].name]), key=lambda n: load[n])
        load[node] += len(by_shard[number])
        out.setdefault(node, []).extend(by_shard[number])
    if not out:
        raise DatabaseError(f"{split.path}: no videos to read (none has >= {min_frames} frames)")
    return out


def shard_holders(split: ShardedSplit) -> dict[str, list[str]]:
    """Which alive Ray nodes (with CPUs to read on) hold each shard of ``split``: shard name -> node ids.

    A node that holds shards but no manifest, another build's manifest, or a damaged or foreign shard, is an error
    naming it: its shards cannot be read as this split's."""
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)
    probe = ray.remote(num_cpus=0, max_retries=0)(_holdings)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
        split.path, [s.name for s in split.shards], split.fingerprint) for node in nodes]
    held: dict[str, list[str]] = {s.name: [] for s in split.shards}
    for node, answer in zip(nodes, ray.get(refs, timeout=PROBE_SECONDS), strict=True):
        if answer["error"]:
            raise DatabaseError(f"Ray node {node} ({answer['host']}): {answer['error']}")
        for name in answer["shards"]:
            held[name].append(node)
    return held


def _holdings(path: str, names: list[str], fingerprint: str) -> dict[str, Any]:
    """On one node: the shards of the split at ``path`` found there (after that node's ``VIDEOIQ_PATH_MAP``), each
    checked against the manifest."""
    here = local_path(path)
    present = [n for n in names if os.path.isfile(os.path.join(here, n, "data.mdb"))]
    answer = {"host": socket.gethostname(), "shards": present, "error": ""}
    if not present:
        return answer
    try:
        split = ShardedSplit(path)
    except DatabaseError as e:
        answer["error"] = f"holds {len(present)} shards of {here} but not its manifest ({e})"
        return answer
    if split.fingerprint != fingerprint:
        answer["error"] = (f"{here}: holds another build of this split (fingerprint {split.fingerprint}, the driver's "
                           f"is {fingerprint}); copy the same build to every node")
        return answer
    try:  # each shard it holds whole and of this build: a damaged one stops the run before its first batch
        for number, shard in enumerate(split.shards):
            if shard.name in present:
                split.open_shard(number)
    except DatabaseError as e:
        answer["error"] = str(e)
    return answer


def train_data_config(datasets: dict[str, ray.data.Dataset]) -> ray.train.DataConfig:
    """Split the ``train`` dataset across workers; every worker gets the whole of any other dataset.

    Ray Train replaces a dataset's own execution options with the ``DataConfig``'s (by default the global
    context's), which would drop the ordered blocks a seeded :func:`clip_dataset` asks for; so each of
    ``datasets`` (the ones given to the trainer) takes its own options along.
    """
    options = {name: copy.deepcopy(ds.context.execution_options) for name, ds in datasets.items()}
    return ray.train.DataConfig(datasets_to_split=["train"], execution_options=options)


def iter_clip_batches(shard: Any, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """CPU torch batches ``{"video", "label", "index", "valid"}`` from a dataset or a worker's shard."""
    yield from shard.iter_torch_batches(
        batch_size=batch_size, device="cpu",
        dtypes={"video": torch.uint8, "label": torch.int64, "index": torch.int64, "valid": torch.bool},
    )
