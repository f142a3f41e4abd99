"""Data: dataset specifications (and, with the LMDB format, readers, converters and sampling)."""
from .specs import DATASETS, DatasetSpec, dataset_spec

__all__ = ["DATASETS", "DatasetSpec", "dataset_spec"]
