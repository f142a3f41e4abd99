"""Models: registry, TSN ResNets (FP and any-precision), their integer engine, MobileNetV2, the policy and VideoIQ.

``create_model(name, **kw)`` builds any registered model; ``list_models()`` lists them.
"""
from . import mobilenet_v2, policy, resnet  # noqa: F401  (registers the builders)
from ._registry import create_model, list_models, model_kind, register_model
from .int8 import ENGINES, EngineUnavailable, Int8ResNet
from .policy import PolicyNet, PolicyOutput
from .resnet import ResNet
from .videoiq import VideoIQ, VideoIQOutput, action_names
from .weights import LoadReport, WeightLoadError, load_fp_weights, load_fp_weights_file, read_state_dict

__all__ = [
    "ENGINES",
    "EngineUnavailable",
    "Int8ResNet",
    "LoadReport",
    "PolicyNet",
    "PolicyOutput",
    "ResNet",
    "VideoIQ",
    "VideoIQOutput",
    "WeightLoadError",
    "action_names",
    "create_model",
    "list_models",
    "load_fp_weights",
    "load_fp_weights_file",
    "model_kind",
    "read_state_dict",
    "register_model",
]
