"""Ray Data over the LMDB: same samples as the PyTorch Dataset, reshuffled and seeded epochs, and shards per Train
worker."""
import json
import shutil

import pytest
import torch

from videoiq.data.clips import ClipSpec, VideoClipDataset
from videoiq.data.records import VideoDB, encode_record, forget

pytestmark = pytest.mark.ray

EVAL = ClipSpec(train=False, segments=4, size=24, scale_size=28, num_clips=2)
TRAIN = ClipSpec(train=True, segments=4, size=24)


def test_eval_samples_equal_the_pytorch_dataset(ray_local, tiny_videos):
    from videoiq.ray.data import clip_dataset, iter_clip_batches

    path = str(tiny_videos / "val.lmdb")
    batches = list(iter_clip_batches(clip_dataset(path, EVAL), batch_size=3))
    reference = VideoClipDataset(path, EVAL)
    rows = {int(i): (v, label) for b in batches for i, v, label in zip(b["index"], b["video"], b["label"], strict=True)}
    assert sorted(rows) == list(range(len(reference)))
    for i, (video, label) in rows.items():
        sample = reference[i]
        assert video.shape == (2, 4, 3, 24, 24) and video.dtype == torch.uint8
        assert torch.equal(video, sample["video"]) and label == sample["label"]


def test_training_order_is_reshuffled_every_epoch(ray_local, tiny_videos):
    from videoiq.ray.data import clip_dataset, iter_clip_batches

    ds = clip_dataset(str(tiny_videos / "train.lmdb"), TRAIN, videos_per_block=2)
    orders = [[int(i) for b in iter_clip_batches(ds, 4) for i in b["index"]] for _ in range(3)]
    assert all(sorted(o) == list(range(16)) for o in orders)
    assert len({tuple(o) for o in orders}) > 1


def test_the_read_log_counts_every_video_read_per_node(ray_local, tiny_videos, tmp_path):
    from videoiq.ray.data import clip_dataset, iter_clip_batches, read_counts

    assert read_counts(tmp_path / "reads") == {}  # nothing read yet
    ds = clip_dataset(str(tiny_videos / "train.lmdb"), TRAIN, videos_per_block=2, read_log=str(tmp_path / "reads"))
    for _ in range(2):
        list(iter_clip_batches(ds, 4))
    assert read_counts(tmp_path / "reads") == {ray_local.get_runtime_context().get_node_id(): 2 * 16}


def test_a_seed_fixes_every_execution_and_still_reshuffles_between_them(ray_local, tiny_videos):
    from videoiq.ray.data import clip_dataset, iter_clip_batches

    def executions(ds, n=2):
        batches = [list(iter_clip_batches(ds, 4)) for _ in range(n)]
        return [(torch.cat([b["index"] for b in e]), torch.cat([b["video"] for b in e])) for e in batches]

    path = str(tiny_videos / "train.lmdb")
    first, again = (executions(clip_dataset(path, TRAIN, videos_per_block=2, seed=7)) for _ in range(2))
    for (order, videos), (order_again, videos_again) in zip(first, again, strict=True):
        assert torch.equal(order, order_again) and torch.equal(videos, videos_again)
    assert not torch.equal(first[0][0], first[1][0])  # each epoch still has its own order
    other = executions(clip_dataset(path, TRAIN, videos_per_block=2, seed=8), n=1)[0]
    assert not torch.equal(first[0][1], other[1])


def test_bad_records_fail_or_are_flagged(ray_local, tiny_videos, tmp_path):
    from videoiq.ray.data import clip_dataset, iter_clip_batches

    shutil.copytree(tiny_videos / "val.lmdb", tmp_path / "bad.lmdb")
    db = VideoDB(tmp_path / "bad.lmdb")
    key = db.index.keys[3]
    header, jpegs = db.read(3)
    forget(str(tmp_path / "bad.lmdb"))
    import lmdb

    env = lmdb.open(str(tmp_path / "bad.lmdb"))
    with env.begin(write=True) as txn:
        txn.put(key.encode(), encode_record([b"\xff\xd8" + bytes(len(j) - 2) for j in jpegs], [1], 32, 32, key))
    env.close()
    path = str(tmp_path / "bad.lmdb")
    with pytest.raises(Exception, match=f"record '{key}': sampled frame 0: undecodable"):
        list(iter_clip_batches(clip_dataset(path, EVAL), batch_size=8))
    skip = ClipSpec(**{**EVAL.__dict__, "on_error": "skip"})
    rows = {int(i): bool(v) for b in iter_clip_batches(clip_dataset(path, skip), 8)
            for i, v in zip(b["index"], b["valid"], strict=True)}
    assert rows == {i: i != 3 for i in range(8)}


def _collect_shards(config):
    import ray.train

    from videoiq.ray.data import iter_clip_batches

    seen = {name: [int(i) for b in iter_clip_batches(ray.train.get_dataset_shard(name), 2) for i in b["index"]]
            for name in ("train", "val")}
    rank = ray.train.get_context().get_world_rank()
    with open(f"{config['out']}/rank{rank}.json", "w") as f:
        json.dump(seen, f)


def test_two_train_workers_get_disjoint_complete_shards(ray_local, tiny_videos, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from videoiq.ray.data import clip_dataset, train_data_config

    datasets = {"train": clip_dataset(str(tiny_videos / "train.lmdb"), TRAIN),
                "val": clip_dataset(str(tiny_videos / "val.lmdb"), EVAL)}
    trainer = TorchTrainer(
        _collect_shards, train_loop_config={"out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False), datasets=datasets,
        dataset_config=train_data_config(datasets),
        run_config=RunConfig(storage_path=str(tmp_path / "runs"), name="shards"),
    )
    trainer.fit()
    shards = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    train0, train1 = set(shards[0]["train"]), set(shards[1]["train"])
    assert len(shards[0]["train"]) == len(shards[1]["train"]) == 8
    assert not train0 & train1 and train0 | train1 == set(range(16))
    assert sorted(shards[0]["val"]) == sorted(shards[1]["val"]) == list(range(8))  # validation is not split
