# Two commands for a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel where there is no GPU (a local wheel on the dev machines); a CUDA torch already in the venv is kept.
TORCH_CPU_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# The unit tests: no test that takes more than ~10 s, starts several processes or needs the Slurm cluster.
FAST_MARKERS := not slow and not distributed and not slurm

.PHONY: venv demo lint test test-fast bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip wheel setuptools
	@if $(PY) -c "import torch" 2>/dev/null; then \
	    echo "keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    $(PY) -m pip install -q torch; \
	else \
	    $(PY) -m pip install -q $(TORCH_CPU_SPEC); \
	fi
	@$(PY) -m pip install -q -e ".[test,lint]"
	@touch $@

demo: venv
	$(PY) pretrain/demo.py

lint: venv
	@status=0; \
	$(VENV)/bin/ruff check . || status=1; \
	$(VENV)/bin/ruff format --check . || status=1; \
	exit $$status

test: lint
	# one OpenMP thread per process: tests run several processes on few cores, and oversubscription is 20-40x slower
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS) tests

test-fast: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "$(FAST_MARKERS)" $(PYTEST_ARGS) tests

bench: venv
	$(PY) bench/run_all.py

clean:
	rm -rf runs .pytest_cache
