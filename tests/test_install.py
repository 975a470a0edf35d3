"""Installing without network: what `make wheelhouse` (tools/wheelhouse.py) puts in, and that the optional
dependencies stay optional. (The offline install itself was proven in fresh venvs with the network namespace
removed; README.md, "Install".)"""

from __future__ import annotations

import importlib.util

import pytest
import wheelhouse
from packaging.markers import default_environment
from packaging.requirements import Requirement

from memformers.training.config import ConfigError, load_config
from memformers.training.metrics import wandb_mode


def item(name: str, version: str, *requires: str) -> dict:
    """An entry of pip's installation report."""
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


def test_the_wheelhouse_takes_what_the_requirements_need_except_torch_and_what_only_torch_needs():
    resolved = {
        "deepspeed": item("deepspeed", "0.19.8", "torch", "numpy", "hjson"),
        "torch": item("torch", "2.11.0+stub"),  # the stand-in: no dependencies
        "triton": item("triton", "3.6.0"),  # what a real torch would pull in
        "numpy": item("numpy", "2.4.6"),
        "hjson": item("hjson", "3.1.0"),
        "transformers": item("transformers", "5.25.0", "numpy", 'torch; extra == "torch"', 'pytest; extra == "dev"'),
        "setuptools": item("setuptools", "84.2.1"),
    }
    reqs = [Requirement(r) for r in ("torch>=2.11", "deepspeed>=0.18.5", "transformers>=5.24", "setuptools>=64")]
    specs = wheelhouse.needed(reqs, resolved, default_environment())
    assert specs == [
        "deepspeed==0.19.8", "hjson==3.1.0", "numpy==2.4.6", "setuptools==84.2.1", "transformers==5.25.0",
    ]  # fmt: skip


def test_the_wheelhouse_requirements_are_the_dependencies_plus_the_build_backend():
    core = {Requirement(r).name for r in map(str, wheelhouse.requirements([]))}
    assert {"torch", "deepspeed", "transformers", "sentencepiece", "setuptools"} <= core
    assert not {"wandb", "matplotlib", "datasets", "pytest"} & core
    everything = {r.name for r in wheelhouse.requirements(["all", "test"])}
    assert {"wandb", "matplotlib", "datasets", "pyarrow", "pytest", "webdataset"} <= everything
    with pytest.raises(SystemExit, match="no extra 'gpu'"):
        wheelhouse.requirements(["gpu"])


def test_wandb_is_optional(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert wandb_mode("auto") == "disabled"  # auto logs to metrics.jsonl only
    assert wandb_mode("disabled") == "disabled"
    overrides = ["run_dir=/tmp/x", "data.path=/tmp/shards", "logging.wandb=offline"]
    with pytest.raises(ConfigError, match=r"wandb is not installed: pip install 'memformers\[wandb\]'"):
        load_config(None, overrides)
