# Two commands do everything on a fresh machine:
#   make repro   create .venv if missing, install, get the embedded dataset, run `dvc repro`
#   make test    create .venv if missing, install with dev extras, run the tests
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: repro test install dataset bench clean-runs gpu-check gpu-check-cpu gpu-wheels

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "pixbench needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
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

# The classification cells first, in one process (`pixbench sweep`: torch and timm imported
# once, not once per cell); `dvc repro` then records each finished cell (same spec digest)
# without importing torch, and runs every other stage (reports/bench/pipeline-speed.md).
repro: install dataset
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro prepare
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pixbench sweep
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest --benchmark-skip bench/test_bench_smoke.py \
	  bench/test_scale_prepare.py bench/test_scale_loader.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

bench: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pixbench bench --suite auto

# GPU validation kit (README "GPU validation kit"): every CUDA path in one command, < 8 min.
# On a GPU node, with the node's Python (torch with CUDA); GPU_CHECK_ARGS e.g. --out $$OUT.
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH="$(CURDIR)/src$${PYTHONPATH:+:$$PYTHONPATH}" $(GPU_PYTHON) -m pixbench.gpucheck $(GPU_CHECK_ARGS)

# The same steps on this CPU (gloo, the quick bench suite); tests/test_gpucheck.py runs a cut of it.
gpu-check-cpu: install
	$(BIN)/python -m pixbench.gpucheck --cpu $(GPU_CHECK_ARGS)

# Wheels the GPU image lacks (pixbench/gpucheck/wheels.py), into wheels/ (gitignored, ~15 MiB).
gpu-wheels: install
	$(BIN)/python -m pixbench.gpucheck.wheels --dest wheels
