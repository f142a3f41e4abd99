# videoiq: `make test` and `make demo` are the two commands; both create .venv on first use.
# `make lint` runs ruff (configured in pyproject.toml); CI runs it before the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# Never let wandb wait on the network without a key, and never send Ray usage stats.
export WANDB_MODE ?= $(if $(WANDB_API_KEY),online,offline)
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install lint test soak demo gpu-check clean

$(VENV)/.installed: setup.py
	@echo "==> creating $(VENV) and installing videoiq with its dev extras (about 3 minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

lint: install
	$(PY) -m ruff check videoiq tests launch

test: install
	$(PY) -m pytest

soak: install
	$(PY) -m pytest -m soak

demo: install
	bash launch/demo.sh

# On a CUDA machine only: the tiny pipeline on one GPU (nccl, bf16) and the CUDA benchmarks; not in `make test`.
gpu-check: install
	bash launch/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
