"""Install videoiq: the plain-PyTorch core plus its Ray Train/Tune layer.

`pip install -e .` gives the core only (models, quantizers, FLOPs, data, configs, in-process training
with `ray.num_workers: 0`); `pip install -e '.[ray]'` adds Ray Train/Tune/Data, Optuna and matplotlib,
which training on Ray (`ray.num_workers` >= 1, the default) and sweeps need; `pip install -e '.[dev]'`
is the `ray` extra plus the test and lint tools (pytest, ruff). torch is capped at 2.14.1 (the release
this project is tested with) and torchvision is the release that matches it.
"""
from pathlib import Path

from setuptools import find_packages, setup

_VERSION = {}
exec((Path(__file__).parent / "videoiq" / "_version.py").read_text(), _VERSION)

RAY = [
    "ray[train,tune,data,default]>=2.40",
    "optuna>=3.0",  # multi-objective (accuracy, GFLOPs) search in Tune sweeps
    "matplotlib>=3.7",  # the sweep's accuracy-vs-GFLOPs Pareto plot
]

setup(
    name="videoiq",
    version=_VERSION["__version__"],
    description="VideoIQ (ICCV 2021) dynamic network quantization for video, on Ray Train and Tune",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["videoiq", "videoiq.*"]),
    install_requires=[
        "torch>=2.4,<=2.14.1",
        "torchvision>=0.19,<=0.29.1",
        "numpy>=1.24",
        "pyyaml>=6.0",
        "lmdb>=1.4",
        "msgpack>=1.0",
        "pillow>=10.0",
        "simplejpeg>=1.7",  # JPEG decoding about twice as fast as PIL (videoiq bench data)
        "av>=14.0",  # PyAV: video files in (converters) and out (the generated demo set)
        "wandb>=0.17",
    ],
    extras_require={
        "ray": RAY,
        "dev": RAY + ["pytest>=7.4", "ruff>=0.5"],
    },
    entry_points={"console_scripts": ["videoiq=videoiq.cli:main"]},
)
