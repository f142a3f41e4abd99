"""Typed stage configurations: one dataclass per stage, built from shared sections, YAML in and out.

Stages and their config classes (every ``*Config`` is a stage, every ``*Section`` a part of one): ``fp``
:class:`FPConfig`, ``ap`` :class:`APConfig`, ``policy_pretrain`` :class:`PolicyPretrainConfig`, ``policy``
:class:`PolicyConfig` and ``eval`` :class:`EvalConfig`. Each is made of shared sections (``model``,
``quant``, ``data``, ``optim``, ``loss``, ``policy``, ``init``, ``logging``, ``run``, ``ray``, ``speed``, ``eval``)
whose defaults are the paper's values, so a stage YAML only states what differs.

* :func:`load_config` reads a YAML file whose ``stage:`` key picks the class, then applies dotted
  ``--set`` overrides (``optim.lr=0.001``, ``quant.bit_widths=[32,4,2]``; values are YAML).
* Every key is checked: an unknown key is an error naming the nearest valid one, a value of the
  wrong type names the field and the expected type, an impossible value (bit width 0, a negative
  weight) names the field and the allowed range. All problems are reported at once, each blamed on
  the file or the ``--set`` override that set its key.
* Keys that moved (``ray.storage_path`` is now ``run.storage_path``, see ``RENAMED``) still work under
  their old names, with one warning per key.
* :func:`config_to_dict` gives the plain nested dict that goes to Ray and into checkpoints;
  :func:`config_from_dict` rebuilds the same object from it.

Files: ``sections`` (the sections), ``stages`` (the stage classes and dict conversion), ``io`` (YAML and
overrides), ``_typed`` (the dict -> dataclass engine with its type checks).
"""
from ._typed import ConfigError, plain
from .io import (
    apply_overrides,
    config_changes,
    dump_yaml,
    load_config,
    parse_override,
    read_yaml,
    save_config,
    set_value,
)
from .sections import (
    DataSection,
    EvalSection,
    InitSection,
    LoggingSection,
    LossSection,
    ModelSection,
    OptimSection,
    PolicySection,
    QuantSection,
    RaySection,
    RunSection,
    SpeedSection,
)
from .stages import (
    PATH_FIELDS,
    RENAMED,
    STAGES,
    APConfig,
    EvalConfig,
    FPConfig,
    PolicyConfig,
    PolicyPretrainConfig,
    StageConfig,
    absolute_paths,
    config_from_dict,
    config_to_dict,
    default_config,
    renamed_key,
)

__all__ = [
    "ConfigError", "plain", "apply_overrides", "config_changes", "dump_yaml", "load_config", "parse_override",
    "read_yaml", "save_config", "set_value", "DataSection", "EvalSection", "InitSection", "LoggingSection",
    "LossSection", "ModelSection", "OptimSection", "PolicySection", "QuantSection", "RaySection", "RunSection",
    "SpeedSection",
    "PATH_FIELDS", "RENAMED", "STAGES", "APConfig", "EvalConfig", "FPConfig", "PolicyConfig", "PolicyPretrainConfig",
    "StageConfig", "absolute_paths", "config_from_dict", "config_to_dict", "default_config", "renamed_key",
]
