# Two commands for a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel where there is no GPU (a local wheel on the dev machines); a CUDA torch already in the venv is kept.
TORCH_CPU_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv demo test bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip wheel setuptools
	@if $(PY) -c "import torch" 2>/dev/null; then \
	    echo "keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    $(PY) -m pip install -q torch; \
	else \
	    $(PY) -m pip install -q $(TORCH_CPU_SPEC); \
	fi
	@$(PY) -m pip install -q -e ".[test]"
	@touch $@

demo: venv
	$(PY) pretrain/demo.py

test: venv
	# one OpenMP thread per process: tests run several processes on few cores, and oversubscription is 20-40x slower
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS) tests

bench: venv
	$(PY) bench/run_all.py

clean:
	rm -rf runs .pytest_cache
