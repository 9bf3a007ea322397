# Two commands do everything on a fresh machine:
#   make repro   create .venv if missing, install, get the embedded dataset, run `dvc repro`
#   make test    create .venv if missing, install with dev extras, run the tests
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: repro test install dataset bench clean-runs

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

repro: install dataset
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest bench/test_bench_smoke.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

bench: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pixbench bench --suite auto
