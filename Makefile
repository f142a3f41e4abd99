# videoiq: `make test` and `make demo` are the two commands; both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# Never let wandb wait on the network without a key, and never send Ray usage stats.
export WANDB_MODE ?= $(if $(WANDB_API_KEY),online,offline)
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install test demo clean

$(VENV)/.installed: setup.py
	@echo "==> creating $(VENV) and installing videoiq with its dev extras (about 3 minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

demo:
	@echo "make demo: not available yet. It will generate the demo videos, start a local Ray cluster,"
	@echo "submit the four-stage pipeline with 'ray job submit' and print fp vs ap vs VideoIQ accuracy"
	@echo "and GFLOPs once the data (issue #3) and training stages (issue #4) land. Nothing was run."
	@exit 2

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
