"""The training path made for GPUs, tested on the CPU: `model.compile` gives the eager losses (ZeRO-2, BPTT and
memory replay), a step reads nothing back from the device in our code, `data_wait_share`, `loader_cpu_share` and
`logging.profile_steps` in a real run, and `make gpu-check`'s dry run.

Compiling runs Inductor (C++ on the CPU, gcc): ~20-45 s cold on 2 cores, seconds once its cache (under /tmp) is
warm; the three tests that compile share the tiny model's fp32 graphs, so only the first pays.
"""

from __future__ import annotations

import json
import platform
import sys

import pytest
from conftest import tiny_run_args
from launch import REPO, cpu_env, run

from bench import gpu_check

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def paths(tiny_shards, tmp_path_factory) -> dict:
    """tests/scripts/train_paths.py's JSON: losses of eager and compiled runs, device reads per step."""
    out = run([sys.executable, "tests/scripts/train_paths.py", str(tiny_shards), str(tmp_path_factory.mktemp("paths"))])
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_compiled_layers_give_the_eager_losses_with_zero2_bptt_and_replay(paths):
    for mode in ("bptt", "replay"):
        eager, compiled = paths[f"{mode}-eager"]["losses"], paths[f"{mode}-compiled"]["losses"]
        assert len(eager) == len(compiled) == 3
        assert eager[0] > eager[2]  # the model trains
        assert max(abs(a - b) for a, b in zip(eager, compiled)) < 1e-4, (mode, eager, compiled)
    # the first compiled run compiled (the second reuses its graphs: identical layers, dynamic shapes)
    assert paths["bptt-compiled"]["compiles"] >= 2 and paths["bptt-compiled"]["compile_s"] > 0
    # replay computes what BPTT computes (no dropout in the tiny preset)
    assert paths["replay-eager"]["losses"] == pytest.approx(paths["bptt-eager"]["losses"], rel=1e-6)


def test_a_training_step_reads_nothing_back_from_the_device_in_our_code(paths):
    for mode in ("bptt-eager", "replay-eager"):
        steps = paths[mode]["reads"]
        assert len(steps) == 2
        for reads in steps:
            ours = {op: count for op, count in reads.items() if op.startswith("memformers")}
            assert not ours, f"{mode}: reads of device values in memformers during a step: {ours}"
            # the counter sees reads (DeepSpeed's gradient-norm checks, transformers' mask checks): it can fail
            assert any(op.startswith("deepspeed") for op in reads), reads


def test_compile_profile_and_data_wait_in_a_real_run(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_run_args(run_dir, tiny_shards, "deepspeed=ds_configs/zero2_fp32.json", "model.compile=true",
                         "logging.profile_steps=[2,3]", "train.max_steps=4", "checkpoint.every_steps=100")  # fmt: skip
    out = run([sys.executable, "pretrain/train.py", *args], env=cpu_env())
    compile_lines = [line for line in out.stdout.splitlines() if line.startswith("model.compile:")]
    assert len(compile_lines) == 1 and " compiles took " in compile_lines[0], out.stdout[-2000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(0.0 <= r["data_wait_share"] < 1.0 for r in steps), steps
    # the loader's thread did work for every step's batches (reads, noise): measured, so above 0
    assert all(r["loader_cpu_share"] > 0.0 for r in steps), steps
    assert all("stop_agreed" not in r for r in steps)
    trace = run_dir / "profile" / "rank-00000-steps-2-3.json"
    events = {event.get("name") for event in json.loads(trace.read_text())["traceEvents"]}
    assert {"step 2", "step 3"} <= events and "step 1" not in events and "step 4" not in events
    assert "aten::" in trace.with_suffix(".txt").read_text()
    assert "profile of steps 2-3: " in out.stdout


def test_gpu_check_dry_run_runs_the_whole_check_on_the_cpu(tmp_path):
    benchmarks = (REPO / "BENCHMARKS.md").read_text()
    out = run([sys.executable, "bench/gpu_check.py", "--dry-run", "--output", str(tmp_path)], env=cpu_env())
    assert "the dry run" in out.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["checks"] and all(check["passed"] for check in results["checks"]), results["checks"]
    assert [p["status"] for p in results["phases"]] == ["ok"] * len(results["phases"])
    runs = {(r["replay"], r["compiled"]) for r in results["throughput"]}
    assert runs == {(False, False), (True, False), (False, True), (True, True)}
    for r in results["throughput"]:
        assert r["tokens_per_s"] > 0 and 0.0 <= r["data_wait_share"] < 1.0 and r["lanes"] == 2
        assert r["loader_cpu_share"] > 0.0
    assert (REPO / "BENCHMARKS.md").read_text() == benchmarks  # only a GPU run rewrites it
    # What a GPU run puts in BENCHMARKS.md, made by the same code: between the markers, on a copy, all else kept.
    section = (tmp_path / "benchmarks-section.md").read_text().strip()
    assert section.startswith(gpu_check.START) and section.endswith(gpu_check.END)
    assert "| tiny | replay | yes | 2 |" in section and f"Python {platform.python_version()}" in section
    copy = tmp_path / "BENCHMARKS.md"
    copy.write_text(benchmarks)
    gpu_check.rewrite_benchmarks(section, copy)
    head, tail = benchmarks.split(gpu_check.START)[0], benchmarks.split(gpu_check.END)[1]
    assert copy.read_text() == head + section + tail


def test_mfu_peak_is_found_by_the_device_name_cuda_reports():
    from memformers.training.distributed import peak_tflops_of

    names = {
        "NVIDIA H100 80GB HBM3": 989.0,  # SXM
        "NVIDIA H100 PCIe": 756.0,
        "NVIDIA H100 NVL": 835.0,
        "NVIDIA H200": 989.0,
        "NVIDIA A100-SXM4-80GB": 312.0,
        "NVIDIA L40S": 362.0,  # not the L4's peak: "L4" is in its name too
        "NVIDIA L4": 121.0,
        "NVIDIA GeForce RTX 4090": None,  # not listed: no MFU (logging.peak_tflops gives one)
    }
    assert {name: peak_tflops_of(name) for name in names} == names
