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
# Offline installs (compute nodes without network): `make wheelhouse` here, `make venv WHEELHOUSE=wheelhouse` there.
WHEELHOUSE ?=
# The extras installed: everything for development; only the dependencies (training, export, gpu-check) offline.
EXTRAS ?= $(if $(WHEELHOUSE),,all,test,lint)
# `make wheelhouse` for another machine: its Python (e.g. 3.12) and, optionally, its platform tags.
PYTHON_VERSION ?=
PLATFORM ?=
WHEELHOUSE_EXTRAS ?=
GPU_CHECK_ARGS ?=

.PHONY: venv demo lint test test-fast bench wheelhouse gpu-check clean

venv: $(VENV)/.installed

# Online: pip from the index (CPU torch where there is no GPU; a torch already in the venv is kept). With
# WHEELHOUSE: no network at all (--no-index), and the PyTorch of $(PYTHON) is kept: a venv that cannot import
# torch gets a .pth file naming the site-packages of $(PYTHON)'s torch (a system install, or another venv, as on
# the GPU image: --system-site-packages would not reach a venv's), whose packages then count as installed; the
# venv's own come first (and torch's `torchrun` gets a launcher in the venv). A Python without ensurepip makes a
# venv without pip, filled by $(PYTHON)'s pip.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || $(PYTHON) -m venv --without-pip $(VENV)
	@if [ -n "$(WHEELHOUSE)" ]; then \
	    test -d "$(WHEELHOUSE)" || { echo "WHEELHOUSE=$(WHEELHOUSE) is not a folder (make wheelhouse makes one)"; exit 2; }; \
	    pip="$(PY) -m pip"; $(PY) -m pip --version >/dev/null 2>&1 || pip="$(PYTHON) -m pip --python $(PY)"; \
	    if ! $(PY) -c "import torch" 2>/dev/null; then \
	        site=$$($(PYTHON) -c "import torch, pathlib; print(pathlib.Path(torch.__file__).parents[1])") || \
	            { echo "no PyTorch in $(PYTHON): install the one for this machine first (wheelhouses carry all but torch)"; exit 2; }; \
	        echo "$$site" > $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_machine_torch.pth; \
	        printf '#!%s\nimport sys\nfrom torch.distributed.run import main\nsys.exit(main())\n' "$(abspath $(PY))" \
	            > $(VENV)/bin/torchrun && chmod +x $(VENV)/bin/torchrun; \
	    fi; \
	    echo "keeping torch $$($(PY) -c 'import torch; print(torch.__version__, "from", torch.__file__)')"; \
	    $$pip install -q --no-index --find-links $(WHEELHOUSE) -e ".$(if $(EXTRAS),[$(EXTRAS)])"; \
	else \
	    $(PY) -m pip install -q --upgrade pip wheel setuptools; \
	    if $(PY) -c "import torch" 2>/dev/null; then \
	        echo "keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	        $(PY) -m pip install -q torch; \
	    else \
	        $(PY) -m pip install -q $(TORCH_CPU_SPEC); \
	    fi; \
	    $(PY) -m pip install -q -e ".$(if $(EXTRAS),[$(EXTRAS)])"; \
	fi
	@touch $@

# Wheels of every dependency but torch (DeepSpeed built here, its ops left to its JIT) for the running Python, or
# for PYTHON_VERSION (binary wheels for PLATFORM); the dependencies alone unless WHEELHOUSE_EXTRAS (e.g. all,test).
wheelhouse:
	$(PYTHON) tools/wheelhouse.py --output $(or $(WHEELHOUSE),wheelhouse) \
	    $(if $(WHEELHOUSE_EXTRAS),--extras $(WHEELHOUSE_EXTRAS)) \
	    $(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION)) $(if $(PLATFORM),--platform $(PLATFORM))

# The GPU check (bench/gpu_check.py): ~7 minutes on one H100; on a machine without CUDA, its dry run on the CPU.
gpu-check: venv
	@$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || \
	    echo "no CUDA device here: running the dry run (the same code on the CPU, tiny model, a few steps)"
	PYTHONUNBUFFERED=1 $(PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

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
