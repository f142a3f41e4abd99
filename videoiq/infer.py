"""``videoiq infer``'s core, without Ray: what a collection is, how a batch of clips is classified, the results.

* :func:`open_collection`: ``--input`` as the videos to classify: a split (one LMDB or a sharded split; keys and
  labels from its index), a folder searched for video files, or a list file of ``path [label ...]`` lines (paths
  relative to the list's folder, labels as class ids); each video has a key (the record's key, or the file's
  path) and its labels where they are known.
* :func:`decode_files`: video files to evaluation clips (:func:`videoiq.predict.file_clip`, what ``predict``
  classifies), a file that cannot be decoded becoming a row with its error.
* :class:`Classifier`: a policy checkpoint on batches of evaluation clips, by conditional execution on the float
  or int8 engine (:meth:`videoiq.models.VideoIQ.infer`): per video its logits, top classes, the action of each
  sampled frame and its GFLOPs, or the error that kept it from being classified. The Ray pipeline
  (``videoiq.ray.infer``) runs it in its actors.
* :class:`ResultsFolder`: ``--out``: ``infer.json`` (what the results are of), ``part-NNNNN.parquet`` files each
  written whole (a temporary file, then a rename), one writer at a time; a re-run skips the keys its parts hold.
* :func:`summarize`: ``summary.json`` from every part: videos, errors, action shares, GFLOPs per video, and
  top-1/top-5/mAP where the labels are known, scored by the code ``eval`` scores with; :func:`publish` sends it
  to wandb with a table of the first videos and a picture of some of them with their decisions.
"""
from __future__ import annotations

import io
import json
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import FolderLock, write_bytes_atomic, write_text_atomic
from .data.codec import VideoDecodeError
from .data.lists import VIDEO_EXTENSIONS
from .data.records import DatabaseError
from .data.shards import is_sharded, open_split
from .data.transforms import normalize
from .errors import UsageError
from .flops import action_usage
from .predict import LoadedPolicy, file_clip, load_policy
from .train.scoring import Predictions, score

TOP = 5
PART = "part-"
SETTINGS = "infer.json"
SUMMARY = "summary.json"
LOCK = ".infer.lock"
ERROR_EXAMPLES = 20


@dataclass
class Collection:
    """The videos of ``--input``: ``keys[i]`` is video ``i``'s key, ``labels[i]`` its class ids (``()``: unknown);
    ``files[i]`` its path for video files, ``split`` the opened split for a database."""

    path: str
    kind: str  # "split" or "files"
    keys: list[str]
    labels: list[tuple[int, ...]]
    files: list[str]
    fingerprint: str = ""

    @property
    def labelled(self) -> bool:
        return bool(self.keys) and all(self.labels)


def open_collection(path: str, classes: list[str]) -> Collection:
    """``--input`` as a :class:`Collection`, checked against the checkpoint's ``classes``; a bad one is one
    :class:`UsageError` (or :class:`DatabaseError`) naming it."""
    if os.path.isdir(path) and (is_sharded(path) or os.path.isfile(os.path.join(path, "data.mdb"))):
        split = open_split(path)
        if list(split.classes) != list(classes):
            raise DatabaseError(f"--input: {path} lists other classes ({len(split.classes)}) than the checkpoint "
                                f"was trained on ({len(classes)})")
        return Collection(path, "split", list(split.index.keys), [tuple(x) for x in split.index.labels], [],
                          split.fingerprint)
    if os.path.isdir(path):
        files = sorted(str(p) for p in Path(path).rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        if not files:
            raise UsageError(f"--input: {path} holds no {'/'.join(VIDEO_EXTENSIONS)} files (nor is it a videoiq "
                             "LMDB or sharded split)")
        return Collection(path, "files", [os.path.relpath(f, path) for f in files], [()] * len(files), files)
    if os.path.isfile(path):
        if path.lower().endswith(VIDEO_EXTENSIONS):
            return Collection(path, "files", [path], [()], [path])
        return _list_file(path, len(classes))
    raise UsageError(f"--input: {path} does not exist (expected a video list, a folder of videos, an LMDB or a "
                     "sharded split)")


def _list_file(path: str, num_classes: int) -> Collection:
    root = os.path.dirname(os.path.abspath(path))
    keys, labels, seen = [], [], {}
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise UsageError(f"--input: {path} is not a text list of videos (nor a video file)") from None
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            ids = tuple(int(f) for f in fields[1:])
        except ValueError:
            raise UsageError(f"--input: {path} line {n}: expected 'video [label ...]' with integer class ids, "
                             f"got {line.strip()!r}") from None
        bad = [i for i in ids if not 0 <= i < num_classes]
        if bad:
            raise UsageError(f"--input: {path} line {n}: class id {bad[0]} is outside the checkpoint's "
                             f"0..{num_classes - 1}")
        if fields[0] in seen:
            raise UsageError(f"--input: {path} line {n}: {fields[0]} is listed twice (first on line {seen[fields[0]]})")
        seen[fields[0]] = n
        keys.append(fields[0])
        labels.append(ids)
    if not keys:
        raise UsageError(f"--input: {path} lists no videos")
    files = [k if os.path.isabs(k) else os.path.join(root, k) for k in keys]
    return Collection(path, "files", keys, labels, files)


def decode_files(batch: dict[str, np.ndarray], spec: Any) -> dict[str, np.ndarray]:
    """The decode stage for video files: ``{"index", "path"}`` to ``{"index", "video", "valid", "error"}``; a
    file that does not decode is an invalid row (zeros) carrying its error."""
    n = len(batch["index"])
    videos = np.zeros((n, *spec.sample_shape), np.uint8)
    valid, errors = np.ones(n, bool), np.array([""] * n, dtype=object)
    for i, path in enumerate(batch["path"]):
        try:
            clip, _, _ = file_clip(str(path), spec)
            videos[i] = clip.numpy()
        except VideoDecodeError as e:
            valid[i], errors[i] = False, str(e)
    return {"index": batch["index"], "video": videos, "valid": valid, "error": errors}


class Classifier:
    """A policy checkpoint on batches ``{"index", "video" (B, 1, T, 3, S, S) uint8, "valid", "error"}``: per row
    ``index``, ``error``, ``logits`` (C), ``top`` / ``top_p`` (the top classes' ids and probabilities),
    ``actions`` (T action ids), ``gflops`` (paper convention) and ``gflops_run`` (the frames that ran), and the
    actor's own ``actor`` (host:pid), ``busy`` (seconds it has computed) and ``alive`` (seconds since its model was
    ready), for how busy the model was. ``forced``: one action name per sampled frame, taken in place of the
    policy's, which still runs (benchmarks: the cost of a real run at GFLOPs known exactly); ``dense_fp``: the
    checkpoint's full-precision model on every frame instead of VideoIQ (the reference the savings are measured
    against)."""

    def __init__(self, checkpoint: str, engine: str = "float", device: str = "cpu", threads: int = 0,
                 forced: list[str] | None = None, dense_fp: bool = False):
        if threads:
            torch.set_num_threads(threads)
        self.policy: LoadedPolicy = load_policy(checkpoint, device, engine)
        self.engine, self.dense_fp = engine, dense_fp
        model = self.policy.model
        self.forced = None if forced is None else torch.tensor([model.actions.index(a) for a in forced])
        if dense_fp and model.teacher is None:
            raise UsageError(f"{checkpoint}: this policy checkpoint has no full-precision model to run densely")
        self.name, self.busy, self.ready = f"{socket.gethostname()}:{os.getpid()}", 0.0, time.perf_counter()

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        p, model = self.policy, self.policy.model
        n, frames, classes = len(batch["index"]), p.spec.frames, len(p.classes)
        k = min(TOP, classes)
        out = {"index": batch["index"], "error": batch["error"],
               "logits": np.zeros((n, classes), np.float32), "top": np.zeros((n, k), np.int32),
               "top_p": np.zeros((n, k), np.float32), "actions": np.zeros((n, frames), np.int8),
               "gflops": np.zeros(n), "gflops_run": np.zeros(n)}
        rows = np.flatnonzero(batch["valid"])
        if len(rows):
            video = normalize(torch.from_numpy(batch["video"][rows]).to(p.device)).flatten(0, 1)  # one view each
            if self.dense_fp:
                logits = model.teacher(video)
                decisions = torch.zeros(len(rows), frames, len(model.actions))
                decisions[..., model.actions.index("32bit")] = 1
            else:
                forced = None
                if self.forced is not None:  # the policy still runs, as it would: its decisions are replaced
                    model.policy(video, deterministic=True)
                    forced = self.forced.repeat(len(rows), 1).to(p.device)
                logits, decisions = model.infer(video, deterministic=True, forced_actions=forced, engine=self.engine)
            logits, decisions = logits.float().cpu(), decisions.float().cpu()
            best = torch.topk(torch.softmax(logits, dim=1), k)
            out["logits"][rows], out["top"][rows], out["top_p"][rows] = logits.numpy(), best.indices.numpy(), \
                best.values.numpy()
            out["actions"][rows] = decisions.argmax(dim=-1).numpy()
            for r, d in zip(rows, decisions, strict=True):
                usage = action_usage(d, model.actions)
                out["gflops"][r] = p.cost.gmacs(usage, with_policy=not self.dense_fp).total
                out["gflops_run"][r] = p.cost.gmacs(usage, charge_skipped=False,
                                                    with_policy=not self.dense_fp).total
        now = time.perf_counter()
        self.busy += now - start
        out.update(actor=np.array([self.name] * n, dtype=object), busy=np.full(n, self.busy),
                   alive=np.full(n, now - self.ready))
        return out


def part_files(out: str) -> list[str]:
    """The Parquet parts of the results folder ``out``, oldest first."""
    return sorted(os.path.join(out, f) for f in os.listdir(out) if f.startswith(PART) and f.endswith(".parquet"))


class ResultsFolder:
    """``--out``: the settings the results are of (``infer.json``), the Parquet parts, the summary; ``with`` it
    for the one-writer lock. A folder of other settings (checkpoint, engine, input) or not made by ``infer`` is
    refused."""

    def __init__(self, out: str, settings: dict[str, Any]):
        self.out, self.settings = out, settings
        if os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(f"--out: {out} exists and is not a folder")
        saved = os.path.join(out, SETTINGS)
        if os.path.isfile(saved):
            try:
                previous = json.loads(Path(saved).read_text())
            except ValueError:
                raise UsageError(f"--out: {saved} is damaged (not JSON); choose another --out") from None
            changed = [k for k in ("checkpoint", "engine", "input", "input_fingerprint", "dense_fp", "forced")
                       if previous.get(k) != settings.get(k)]
            if changed:
                what = ", ".join(f"{k} {previous.get(k)!r} (now {settings.get(k)!r})" for k in changed)
                raise UsageError(f"--out: {out} holds the results of another run: {what}; choose another --out")
        elif os.path.isdir(out) and [f for f in os.listdir(out) if not f.startswith(".")]:
            raise UsageError(f"--out: {out} is not empty and has no {SETTINGS}: not a videoiq infer folder; choose "
                             "an empty or new folder")

    def __enter__(self) -> ResultsFolder:
        os.makedirs(self.out, exist_ok=True)
        self.lock = FolderLock(self.out, LOCK, "videoiq infer", UsageError).__enter__()
        for f in os.listdir(self.out):
            if f.startswith(f".{PART}") and f.endswith(".tmp"):  # a part whose writer died before its rename
                os.remove(os.path.join(self.out, f))
        write_text_atomic(os.path.join(self.out, SETTINGS), json.dumps(self.settings, indent=1) + "\n")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.lock.__exit__(*exc)

    def parts(self) -> list[str]:
        return part_files(self.out)

    def read(self, columns: list[str] | None = None) -> Any:
        """Every part as one ``pyarrow.Table`` (``None`` when there is none); a damaged part is an error naming it."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for part in self.parts():
            try:
                tables.append(pq.read_table(part, columns=columns))
            except (OSError, pa.ArrowException) as e:
                raise UsageError(f"--out: {part} is damaged ({e}); remove it and re-run to redo its videos") from None
        return pa.concat_tables(tables) if tables else None

    def done_keys(self) -> set[str]:
        table = self.read(["key"])
        return set() if table is None else set(table.column("key").to_pylist())

    def write_part(self, rows: dict[str, list[Any]]) -> str:
        """One part file of ``rows`` (columns of equal length), whole or not at all."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        numbers = [int(os.path.basename(p)[len(PART):-len(".parquet")]) for p in self.parts()]
        path = os.path.join(self.out, f"{PART}{max(numbers, default=-1) + 1:05d}.parquet")
        buffer = io.BytesIO()
        pq.write_table(pa.table(rows, schema=schema()), buffer)
        write_bytes_atomic(path, buffer.getvalue())
        return path


def schema() -> Any:
    """The Parquet schema of a result row (``docs/predict.md`` says what each column holds)."""
    import pyarrow as pa

    names = pa.list_(pa.string())
    return pa.schema([("key", pa.string()), ("labels", names), ("top_classes", names),
                      ("top_probabilities", pa.list_(pa.float32())), ("actions", names), ("gflops", pa.float64()),
                      ("gflops_frames_run", pa.float64()), ("logits", pa.list_(pa.float32())),
                      ("engine", pa.string()), ("checkpoint", pa.string()), ("error", pa.string())])


def result_rows(out: dict[str, np.ndarray], collection: Collection, policy: LoadedPolicy,
                checkpoint_id: str, engine: str) -> dict[str, list[Any]]:
    """A :class:`Classifier` batch as Parquet columns: names in place of ids, the source's key and labels."""
    classes, actions = policy.classes, policy.model.actions
    idx = out["index"].tolist()
    ok = [not e for e in out["error"]]
    keep = lambda values: [v if good else None for v, good in zip(values, ok, strict=True)]  # noqa: E731
    return {
        "key": [collection.keys[i] for i in idx],
        "labels": [[classes[c] for c in collection.labels[i]] for i in idx],
        "top_classes": keep([[classes[c] for c in row] for row in out["top"].tolist()]),
        "top_probabilities": keep(out["top_p"].tolist()),
        "actions": keep([[actions[a] for a in row] for row in out["actions"].tolist()]),
        "gflops": keep(out["gflops"].tolist()),
        "gflops_frames_run": keep(out["gflops_run"].tolist()),
        "logits": keep(out["logits"].tolist()),
        "engine": [engine] * len(idx),
        "checkpoint": [checkpoint_id] * len(idx),
        "error": [str(e) for e in out["error"]],
    }


def summarize(folder: ResultsFolder, policy: LoadedPolicy, run: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """``summary.json`` of every part in ``folder`` (written and returned); ``run`` holds this run's own figures
    (videos/s, model busy). Rows are scored in the collection's ``order`` of keys (eval's, for a split), so tied
    scores rank as they do there."""
    table = folder.read()
    rank = {key: i for i, key in enumerate(order)}
    rows = sorted(table.to_pylist() if table is not None else [], key=lambda r: rank.get(r["key"], len(rank)))
    good = [r for r in rows if not r["error"]]
    bad = [r for r in rows if r["error"]]
    summary: dict[str, Any] = {"videos": len(rows), "classified": len(good), "errors": len(bad),
                               "error_examples": [{"key": r["key"], "error": r["error"]} for r in bad[:ERROR_EXAMPLES]],
                               "checkpoint": folder.settings["checkpoint"], "engine": folder.settings["engine"],
                               "input": folder.settings["input"], "frames_per_video": policy.spec.frames,
                               "gflops_fp_model": policy.fp_gflops, **run}
    if good:
        counts = Counter(a for r in good for a in r["actions"])
        total = sum(counts.values())
        summary["actions"] = {a: 100.0 * counts[a] / total for a in policy.model.actions}
        summary["gflops_per_video"] = float(np.mean([r["gflops"] for r in good]))
        summary["gflops_frames_run_per_video"] = float(np.mean([r["gflops_frames_run"] for r in good]))
        index = {c: i for i, c in enumerate(policy.classes)}
        if all(r["labels"] for r in good):  # scored as eval scores: the same functions on the same logits
            pred = Predictions(np.arange(len(good)), np.array([r["logits"] for r in good], np.float32), {}, 0)
            labels = tuple(tuple(index[c] for c in r["labels"]) for r in good)
            scored = score(pred, labels, len(policy.classes), prefix="infer")
            summary.update({k: scored[f"infer/{k}"] for k in ("top1", "top5", "mAP") if f"infer/{k}" in scored})
    write_text_atomic(os.path.join(folder.out, SUMMARY), json.dumps(summary, indent=1) + "\n")
    return summary


def publish(folder: ResultsFolder, summary: dict[str, Any], collection: Collection, policy: LoadedPolicy, mode: str,
            project: str = "videoiq", table_rows: int = 100, pictured: int = 8) -> str | None:
    """The summary to a wandb run kept in ``folder`` (``mode`` as :func:`videoiq.tracking.resolve_mode` returns it),
    with a table of the first ``table_rows`` videos and ``decisions.png``: the sampled frames of the first
    ``pictured`` classified videos, each with its action. Returns the picture's path (``None`` when disabled)."""
    from .strips import decision_strip, save_strip
    from .tracking import Tracker

    if mode == "disabled":
        return None
    rank = {key: i for i, key in enumerate(collection.keys)}
    rows = sorted(folder.read(["key", "labels", "top_classes", "top_probabilities", "actions", "gflops",
                               "error"]).to_pylist(), key=lambda r: rank[r["key"]])
    table = [[r["key"], " ".join(r["labels"]), r["top_classes"][0] if r["top_classes"] else None,
              r["top_probabilities"][0] if r["top_probabilities"] else None, " ".join(r["actions"] or ()),
              r["gflops"], r["error"]] for r in rows[:table_rows]]
    shown = [r for r in rows if not r["error"]][:pictured]
    frames = [_pixels(collection, rank[r["key"]], policy) for r in shown]
    picture = None
    if shown:
        picture = save_strip(decision_strip(frames, [r["actions"] for r in shown],
                                            [f"{r['key']}: {r['top_classes'][0]}" for r in shown]),
                             os.path.join(folder.out, "decisions.png"))
    tracker = Tracker.start(mode=mode, directory=folder.out, project=project, name="infer", job_type="infer",
                            group=None, config=folder.settings, resume=False)
    with tracker:
        tracker.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))}
                        | {f"actions/{a}": v for a, v in summary.get("actions", {}).items()}
                        | {f"this_run/{k}": v for k, v in summary.get("this_run", {}).items()})
        tracker.table("infer/videos", ["key", "labels", "class", "probability", "actions", "gflops", "error"], table)
        if picture is not None:
            tracker.image("infer/decisions", picture)
    return picture


def _pixels(collection: Collection, i: int, policy: LoadedPolicy) -> np.ndarray:
    """Video ``i``'s sampled frames as the model saw them, ``(T, S, S, 3)`` uint8 (for a picture)."""
    if collection.kind == "split":
        from .data.clips import VideoClipDataset

        clip = VideoClipDataset(open_split(collection.path), policy.spec)[i]["video"]
    else:
        clip, _, _ = file_clip(collection.files[i], policy.spec)
    return clip[0].permute(0, 2, 3, 1).numpy()
