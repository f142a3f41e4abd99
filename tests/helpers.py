"""Small helpers shared by the test modules (tiny stage configs, data copies, a free port)."""
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


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_data(src, dst, edit_meta=None):
    """Copy a generated data folder's two databases to ``dst`` (a new folder); ``edit_meta(meta)`` changes
    each database's metadata in place (e.g. its class names)."""
    import shutil

    import lmdb
    import msgpack

    from videoiq.data.records import forget

    dst.mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copytree(src / f"{split}.lmdb", dst / f"{split}.lmdb")
        if edit_meta is not None:
            env = lmdb.open(str(dst / f"{split}.lmdb"))
            with env.begin(write=True) as txn:
                meta = msgpack.unpackb(txn.get(b"__meta__"))
                edit_meta(meta)
                txn.put(b"__meta__", msgpack.packb(meta))
            env.close()
        forget(str(dst / f"{split}.lmdb"))
    return dst


def garble_record(db_path, i):
    """Overwrite record ``i`` of a database with JPEGs of the right sizes that do not decode; returns its key."""
    import lmdb

    from videoiq.data.records import VideoDB, encode_record, forget

    db = VideoDB(db_path)
    key = db.index.keys[i]
    header, jpegs = db.read(i)
    forget(str(db_path))
    env = lmdb.open(str(db_path))
    with env.begin(write=True) as txn:
        txn.put(key.encode(), encode_record([b"\xff\xd8" + bytes(len(j) - 2) for j in jpegs], list(header.labels),
                                            header.height, header.width, key))
    env.close()
    forget(str(db_path))
    return key
