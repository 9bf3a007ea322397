# Two commands do everything on a fresh machine:
#   make repro   create .venv if missing, install, get the embedded dataset, run the pipeline
#   make test    create .venv if missing, install with dev extras, run the tests
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: repro test install dataset bench clean-runs gpu-check gpu-check-cpu gpu-wheels

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "pixbench needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)

# uv (Astral's installer: parallel downloads and unpacking) installs the project in ~30 s where
# pip takes ~170 s (2-core VM, reports/bench/pipeline-speed.md). uv reads no pip.conf: where
# it cannot reach the packages (a private mirror set up for pip only), pip installs them.
# --compile-bytecode (pip does it by default, uv does not): without .pyc files every process
# compiles what it imports, ~4 s of CPU for torch + timm, each time where PYTHONDONTWRITEBYTECODE
# is set (CI images, sandboxes); the tests start ~50 such processes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[dev]' \
	  || $(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST ships as Debian's dataset-fashion-mnist; without root or apt the loader falls
# back to $$PIXBENCH_DATA_ROOT, then to a download when online.
dataset:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	    || echo "note: could not apt-get install dataset-fashion-mnist; using PIXBENCH_DATA_ROOT or a download"; \
	fi

# `pixbench study run`: every cell of dvc.yaml here, one per core at a time (each after its
# parents, in workers that import torch once), then `dvc repro` records them (each finished:
# same spec digest) and builds the report and verify (reports/bench/pipeline-speed.md).
repro: install dataset
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pixbench study run

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest --benchmark-skip bench/test_bench_smoke.py \
	  bench/test_scale_prepare.py bench/test_scale_loader.py bench/test_machine_kinds.py \
	  bench/test_rehearsal_render.py bench/test_study_report.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

# Tooling that is not the installed library runs from the checkout with its folders on the
# path: tools/gpucheck (the GPU validation kit) and bench/benchsuite (the compute benchmarks);
# src/ too, for a Python where pixbench is not installed (a GPU node's). pytest gets the same
# folders from pyproject's `pythonpath`.
TOOLS_PATH = $(CURDIR)/tools:$(CURDIR)/bench:$(CURDIR)/src
WITH_TOOLS = PYTHONPATH="$(TOOLS_PATH)$${PYTHONPATH:+:$$PYTHONPATH}"

# BENCH_ARGS e.g. "--suite quick" (the last --suite wins), "--out DIR", "--threads N", "--help".
bench: install
	PATH="$(abspath $(BIN)):$$PATH" $(WITH_TOOLS) \
	  $(BIN)/python -m benchsuite --suite auto $(BENCH_ARGS)

# GPU validation kit (README "GPU validation kit"): every CUDA path in one command, < 8 min.
# On a GPU node, with the node's Python (torch with CUDA); GPU_CHECK_ARGS e.g. --out $$OUT.
GPU_PYTHON ?= python3
gpu-check:
	$(WITH_TOOLS) $(GPU_PYTHON) -m gpucheck $(GPU_CHECK_ARGS)

# The same steps on this CPU (gloo, the quick bench suite); tests/test_gpucheck.py runs a cut of it.
gpu-check-cpu: install
	$(WITH_TOOLS) $(BIN)/python -m gpucheck --cpu $(GPU_CHECK_ARGS)

# Wheels the GPU image lacks (tools/gpucheck/wheels.py), into wheels/ (gitignored, ~15 MiB).
gpu-wheels: install
	$(WITH_TOOLS) $(BIN)/python -m gpucheck.wheels --dest wheels
