"""Data, in plain PyTorch: the videoiq LMDB format and its converters, clip sampling, transforms, readers.

* ``specs``: per-dataset constants (class counts, list files, frame templates, metric);
* ``records``: the versioned LMDB record layout and :class:`~videoiq.data.records.VideoDB`, the reader;
* ``codec``: JPEG and video-file decoding/encoding; ``build``: frame folders / videos -> LMDB;
* ``sampling`` and ``transforms``: TSN frame indices and group transforms on uint8 clips;
* ``clips``: record -> sample, and the PyTorch ``VideoClipDataset``;
* ``synthetic``: the generated demo set; ``inspect``: ``videoiq data inspect``.

The Ray Data reader over the same records is :mod:`videoiq.ray.data`, outside this package, since the
core never imports Ray.
"""
from .specs import DATASETS, DatasetSpec, dataset_spec

__all__ = ["DATASETS", "DatasetSpec", "dataset_spec"]
