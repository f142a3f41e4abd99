"""Faults survived and bad input refused clearly: storage, checkpoints, NaN, data, cluster resources, killed workers."""
import collections
import io
import json
import logging
import os
import shutil
import time

import lmdb
import msgpack
import pytest

from videoiq.config import ConfigError
from videoiq.data.build import build_videos
from videoiq.data.lists import parse_video_list, read_class_names
from videoiq.data.records import DatabaseError, VideoDB, forget
from videoiq.train import checkpoint as ckpt_module
from videoiq.train.checkpoint import CheckpointError, StorageError, load_checkpoint, save_checkpoint
from videoiq.train.loop import NonFiniteLoss
from videoiq.train.session import train_in_process

from helpers import QUIET, TINY_POLICY, copy_data, stage_config


def _fp(root, **sections):
    return stage_config("fp", root, model={"name": "resnet_tiny"}, **sections)


def test_an_unwritable_storage_path_is_refused_before_training(tiny_videos, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(StorageError, match="cannot write to .*a_file/runs"):
        train_in_process(_fp(tiny_videos), tmp_path / "a_file" / "runs", printer=QUIET)


def test_too_little_space_is_refused_before_training(tiny_videos, tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt_module.shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**10, 2**10))
    with pytest.raises(StorageError, match=r"has 0 MiB free; this stage's checkpoints need about [0-9.]+ MiB"):
        train_in_process(_fp(tiny_videos), tmp_path / "fp", printer=QUIET)
    assert not (tmp_path / "fp" / "checkpoint.pt").exists() and not (tmp_path / "fp" / "metrics.jsonl").exists()


def test_a_checkpoint_write_cut_short_keeps_the_previous_one(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "checkpoint.pt", {"stage": "fp", "epoch": 3})

    def full_disk(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_module.torch, "save", full_disk)
    with pytest.raises(StorageError, match="No space left on device; the previous checkpoint there is intact"):
        save_checkpoint(tmp_path / "checkpoint.pt", {"stage": "fp", "epoch": 4})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no half-written file left


@pytest.mark.slow
def test_a_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(trained_stages, tiny_videos, tmp_path):
    runs, _ = trained_stages
    init = {"backbone_checkpoint": str(runs / "ap"), "policy_backbone_checkpoint": str(runs / "pp")}
    cfg = stage_config("policy", tiny_videos, policy=TINY_POLICY, init=init,
                       optim={"epochs": 3, "policy_lr": 1e30})  # diverges in epoch 2
    with pytest.raises(NonFiniteLoss) as info:
        train_in_process(cfg, tmp_path / "policy", printer=QUIET)
    message = str(info.value)
    assert "policy: epoch 2 step 1: the loss is nan" in message
    last = tmp_path / "policy" / "checkpoint.pt"
    assert f"the last good checkpoint is {last} (after epoch 1), left as it was" in message
    assert load_checkpoint(tmp_path / "policy")["epoch"] == 1  # not overwritten with NaN weights


def _rewrite_index(src, dst, edit):
    import shutil

    shutil.copytree(src, dst)
    env = lmdb.open(str(dst))
    with env.begin(write=True) as txn:
        meta, index = msgpack.unpackb(txn.get(b"__meta__")), msgpack.unpackb(txn.get(b"__index__"))
        edit(meta, index)
        txn.put(b"__meta__", msgpack.packb(meta))
        txn.put(b"__index__", msgpack.packb(index))
    env.close()
    forget(str(dst))


def test_labels_outside_the_classes_and_empty_sets_are_refused(tiny_videos, tmp_path):
    def bad_label(meta, index):
        index["labels"][2] = [meta["num_classes"]]

    _rewrite_index(tiny_videos / "val.lmdb", tmp_path / "bad.lmdb", bad_label)
    key = VideoDB(tiny_videos / "val.lmdb").index.keys[2]
    with pytest.raises(DatabaseError,
                       match=f"record '{key}' has label\\(s\\) \\[4\\] outside its 4 classes \\(0..3\\)"):
        VideoDB(tmp_path / "bad.lmdb")

    def empty(meta, index):
        meta["num_videos"] = 0
        index.update(keys=[], num_frames=[], labels=[])

    (tmp_path / "data").mkdir()
    _rewrite_index(tiny_videos / "train.lmdb", tmp_path / "data" / "train.lmdb", empty)
    _rewrite_index(tiny_videos / "val.lmdb", tmp_path / "data" / "val.lmdb", lambda meta, index: None)
    with pytest.raises(ConfigError, match="train.lmdb has no training video"):
        train_in_process(_fp(tmp_path / "data"), tmp_path / "fp", printer=QUIET)


@pytest.mark.ray
def test_worker_groups_the_cluster_cannot_schedule_are_refused(ray_local, tiny_videos, tmp_path):
    from videoiq.dispatch import run_config

    run = {"storage_path": str(tmp_path)}
    with pytest.raises(ConfigError, match="= 5 CPUs, but the Ray cluster has 4"):
        run_config(_fp(tiny_videos, run=run, ray={"num_workers": 5}), printer=QUIET)
    with pytest.raises(ConfigError, match="= 4 CPUs of the cluster's 4 leaves none for the Ray Data readers"):
        run_config(_fp(tiny_videos, run=run, ray={"num_workers": 2, "cpus_per_worker": 2}), printer=QUIET)
    with pytest.raises(ConfigError, match="STRICT_SPREAD puts each of ray.num_workers=2 on its own node, but the "
                                          "Ray cluster has 1"):
        run_config(_fp(tiny_videos, run=run, ray={"num_workers": 2, "placement_strategy": "STRICT_SPREAD"}),
                   printer=QUIET)
    with pytest.raises(ConfigError, match="has 0 GPUs"):
        run_config(_fp(tiny_videos, run={**run, "use_gpu": True}, ray={"num_workers": 1}), printer=QUIET)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(StorageError, match="run.storage_path: cannot write to"):
        run_config(_fp(tiny_videos, run={"storage_path": str(tmp_path / "a_file")}, ray={"num_workers": 1}),
                         printer=QUIET)


@pytest.mark.ray
def test_only_abandoned_worker_groups_of_the_failed_attempt_are_freed(ray_local, tiny_videos):
    from ray.util.placement_group import placement_group, placement_group_table
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from videoiq.ray._placement_groups import GroupJanitor, remove_abandoned_groups

    cfg = _fp(tiny_videos, ray={"num_workers": 2, "cpus_per_worker": 0.5})
    older = placement_group([{"CPU": 0.5}] * 2)  # not from the failed attempt
    ray_local.get(older.ready())
    before = set(placement_group_table())
    abandoned, other_shape, busy = (placement_group(b)
                                    for b in ([{"CPU": 0.5}] * 2, [{"CPU": 0.5}], [{"CPU": 0.5}] * 2))
    ray_local.get([g.ready() for g in (abandoned, other_shape, busy)])

    @ray_local.remote(num_cpus=0.5)
    class Worker:
        def ping(self):
            return 1

    worker = Worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(busy, 0)).remote()
    ray_local.get(worker.ping.remote())
    assert remove_abandoned_groups(before, cfg) == 1
    states = {k: v["state"] for k, v in placement_group_table().items()}
    assert states[abandoned.id.hex()] == "REMOVED"
    assert {states[g.id.hex()] for g in (older, other_shape, busy)} == {"CREATED"}
    # while a run trains, a group of its shape left empty beside its busy one is freed after `patience` checks
    left_behind = placement_group([{"CPU": 0.5}] * 2)
    ray_local.get(left_behind.ready())
    lines = []
    janitor = GroupJanitor(before, cfg, lines.append, interval=0.1, patience=3)
    janitor.start()
    deadline = time.time() + 30
    while placement_group_table()[left_behind.id.hex()]["state"] != "REMOVED" and time.time() < deadline:
        time.sleep(0.1)
    janitor.stop.set()
    janitor.join()
    states = {k: v["state"] for k, v in placement_group_table().items()}
    assert states[left_behind.id.hex()] == "REMOVED" and states[busy.id.hex()] == "CREATED"
    assert lines == ["fp: freed the CPUs of a worker group Ray Train left behind after a restart"]
    ray_local.kill(worker)
    for g in (older, other_shape, busy):
        ray_local.util.remove_placement_group(g)


@pytest.mark.slow
def test_resuming_on_data_of_other_classes_is_refused_naming_them(tiny_videos, tmp_path):
    train_in_process(stage_config("fp", tiny_videos, model={"name": "resnet_tiny"}), tmp_path / "fp", printer=QUIET)
    renamed = copy_data(tiny_videos, tmp_path / "renamed",
                        lambda meta: meta.update(classes=[f"other_{c}" for c in meta["classes"]]))
    for changed_inputs in ("refuse", "keep"):  # keep cannot go on either: its classifier has other classes
        with pytest.raises(CheckpointError, match=r"^fp: .*checkpoint.pt was trained from other inputs than this "
                                                  r"config's: train data: 4 classes \(.*\) -> 4 \(other_"):
            train_in_process(stage_config("fp", renamed, model={"name": "resnet_tiny"}, optim={"epochs": 2},
                                          ray={"changed_inputs": changed_inputs}), tmp_path / "fp", printer=QUIET)
    more = copy_data(tiny_videos, tmp_path / "wider")  # the same classes, a model of another width
    with pytest.raises(CheckpointError, match=r"model.name 'resnet_tiny' -> 'resnet18'"):
        train_in_process(stage_config("fp", more, model={"name": "resnet18"}, optim={"epochs": 2}),
                         tmp_path / "fp", printer=QUIET)
    with pytest.raises(CheckpointError, match=r"its model does not fit this config's model \(size mismatch"):
        train_in_process(stage_config("fp", more, model={"name": "resnet18"}, optim={"epochs": 2},
                                      ray={"changed_inputs": "keep"}), tmp_path / "fp", printer=QUIET)
    assert load_checkpoint(tmp_path / "fp")["epoch"] == 1  # left as it was


@pytest.mark.slow
def test_a_run_on_rebuilt_data_is_refused_or_trained_again_never_silently_resumed(tiny_videos, tmp_path):
    train_in_process(stage_config("fp", tiny_videos, model={"name": "resnet_tiny"}), tmp_path / "fp", printer=QUIET)
    rebuilt = copy_data(tiny_videos, tmp_path / "rebuilt")
    # building it again from the same videos changes nothing: the run resumes
    classes = read_class_names(str(tiny_videos / "classes.txt"))
    items = parse_video_list(str(tiny_videos / "train.txt"), str(tiny_videos))
    build_videos(str(rebuilt / "train.lmdb"), items, classes, short_side=0, split="train", stream=io.StringIO())
    said = []
    train_in_process(stage_config("fp", rebuilt, model={"name": "resnet_tiny"}, optim={"epochs": 2}),
                     tmp_path / "fp", printer=said.append)
    assert said[0] == f"fp: resuming {tmp_path / 'fp'} after epoch 1"
    # rebuilt from other videos (one fewer): refused, naming the database and the counts
    rebuilt = tmp_path / "rebuilt2"
    shutil.copytree(tiny_videos / "val.lmdb", rebuilt / "val.lmdb")
    build_videos(str(rebuilt / "train.lmdb"), items[1:], classes, short_side=0, split="train",
                 stream=io.StringIO())
    cfg = stage_config("fp", rebuilt, model={"name": "resnet_tiny"}, optim={"epochs": 3})
    with pytest.raises(CheckpointError, match=r"^fp: .*checkpoint.pt was trained from other inputs than this "
                                              r"config's: train data rebuilt or replaced: .*/rebuilt/train.lmdb "
                                              r"\(16 videos, \d+ frames\) -> .*rebuilt2/train.lmdb \(15 videos"):
        train_in_process(cfg, tmp_path / "fp", printer=QUIET)
    said = []
    cfg.run.changed_inputs = "retrain"
    assert train_in_process(cfg, tmp_path / "fp", printer=said.append)["epoch"] == 3
    assert "training it again from scratch (run.changed_inputs=retrain)" in said[0]
    aside = next(tmp_path.glob("fp.replaced-*"))
    assert load_checkpoint(aside)["epoch"] == 2  # the old run, moved aside whole
    assert [json.loads(x)["epoch"] for x in (tmp_path / "fp" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    new = load_checkpoint(tmp_path / "fp")
    assert new["lineage"]["data"]["train"]["path"] == str(rebuilt / "train.lmdb")


@pytest.mark.slow
def test_a_local_ray_gets_the_cpus_the_config_asks_for(monkeypatch):
    """Without RAY_ADDRESS videoiq starts a local Ray with at least the workers' CPUs plus one for the Ray Data
    readers, so a config written for a bigger machine is not refused on a 2-core one; with it, it joins."""
    import ray

    from videoiq.ray import train as on_ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(on_ray.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    said = []
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:1")  # another cluster's, left in the shell
    on_ray.connect(2 * 2 + 1, said.append)  # 2 workers x 2 CPUs, plus one
    assert len(calls) == 1 and calls[0]["address"] == "local" and calls[0]["num_cpus"] == 5
    assert "5 logical CPUs on this machine's 2 cores" in said[0]
    # its own dashboard, on a free port every process of the cluster is told (Ray Train's end-of-run
    # cleanup asks it; a wrong or missing address costs each run 12 s)
    assert calls[0]["include_dashboard"] and calls[0]["dashboard_host"] == "127.0.0.1"
    assert os.environ["RAY_API_SERVER_ADDRESS"] == f"http://127.0.0.1:{calls[0]['dashboard_port']}"
    assert calls[0]["dashboard_port"] != 1
    on_ray.connect(1.5, said.append)
    assert calls[-1]["num_cpus"] == 2 and said[1].startswith("started a local Ray with 2 logical CPUs (dashboard")
    assert os.environ["RAY_AUTH_MODE"] == "disabled"  # so Ray writes no token into the user's ~/.ray
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    on_ray.connect(99, said.append)
    assert calls[-1] == {"address": "auto", "log_to_driver": False, "logging_level": logging.WARNING}
