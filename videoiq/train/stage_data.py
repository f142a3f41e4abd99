"""A stage's data, opened once: its databases and what they say (classes, validation labels, the frame kinds of
the validation frames), checked against each other and the config before anything is built.

:meth:`StageData.open` is called where a stage's run starts (``train.session.prepare_run``, in this process or
on the Ray driver, which hands it to its Train workers; the eval stage) and the object is handed to what needs
it: the lineage of the run, the stage's models and validation pass, the readers and the decisions picture.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError, StageConfig
from ..data.frame_kinds import SampledKinds
from ..data.shards import VideoSet, open_split
from ..data.specs import dataset_spec


@dataclass(frozen=True)
class StageData:
    """The training database (``None`` for the eval stage), the validation database and its frame kinds."""

    train: VideoSet | None
    val: VideoSet
    kinds: SampledKinds | None

    @classmethod
    def open(cls, cfg: StageConfig, num_clips: int = 1) -> StageData:
        """Open and check the databases a stage of ``cfg`` reads (the eval stage reads the validation split
        only); ``num_clips``: clips per video in evaluation (frame kinds are reported for one)."""
        train = None if cfg.STAGE == "eval" else open_split(cfg.data.lmdb_path(cfg.data.train_split))
        val = open_split(cfg.data.lmdb_path(cfg.data.val_split))
        if len(val) == 0:
            raise ConfigError(f"data.root: {val.path} has no videos to validate on")
        spec = dataset_spec(cfg.data.dataset)
        if train is not None:
            shortest = spec.min_train_frames
            if not any(n >= shortest for n in train.index.num_frames):
                raise ConfigError(f"data.root: {train.path} has no training video"
                                  + (f" with >= {shortest} frames" if shortest else ""))
            if train.classes != val.classes:
                raise ConfigError(f"{train.path} and {val.path} list different classes")
            if spec.num_classes is not None and train.num_classes != spec.num_classes:
                raise ConfigError(f"data.dataset: {cfg.data.dataset} has {spec.num_classes} classes, "
                                  f"{train.path} has {train.num_classes}")
        kinds = SampledKinds.of(cfg.data.root, cfg.data.val_split, val, cfg.data.num_frames,
                                cfg.data.frames_per_segment, num_clips)
        return cls(train, val, kinds)

    @property
    def classes(self) -> list[str]:
        return self.val.classes

    @property
    def num_classes(self) -> int:
        return self.val.num_classes

    @property
    def val_labels(self) -> tuple[tuple[int, ...], ...]:
        return self.val.index.labels
