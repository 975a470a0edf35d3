"""`make gpu-check`: is the GPU path healthy, and how fast is it? One command, budgeted at 7 minutes on one H100.

    python bench/gpu_check.py [--dry-run] [--budget-s 420] [--models membart-base,membart-large] [--output DIR]

1. Correctness on the device (bench/gpu_correctness.py, tolerances stated there): loss and gradients on the GPU vs
   the CPU in fp32; bf16 vs fp32 loss; memory resets; `generate` with memory; the encoder and decoder attention on
   fused SDPA kernels (proven by allowing only flash / memory-efficient attention, not assumed).
2. Throughput (bench/gpu_throughput.py): the training path with DeepSpeed ZeRO-2 in bf16 on one GPU, 512-token
   segments, membart-base and membart-large, BPTT and memory replay, eager and `model.compile`: tokens/s, MFU (the
   engine's formula: training.engine.flops_per_token), peak memory, the share of the step spent waiting for the
   loader and the loader's CPU time per step time (its producer runs in a process, as on a GPU by default), and
   the host synchronisations of a step; lanes sized by a memory probe.
3. Writes DIR/results.json (default runs/gpu-check) and prints a table; on a GPU it also rewrites the GPU section
   of BENCHMARKS.md (the dry run writes that section to DIR/benchmarks-section.md instead).

Every phase prints its elapsed time. A time guard (`--budget-s`) skips the phases that no longer fit and stops a
phase that runs over (a SIGALRM: it takes effect when Python code runs again, not inside one long C++ call), and
the results written say what was skipped. Exit status: 0 when every check ran and passed and no phase failed or
was stopped (skipped ones are listed), 1 otherwise.

Without CUDA (or with `--dry-run`) the same code runs on the CPU with the tiny preset, 64-token segments and a
few steps: it shows the script works, not that a GPU does, and leaves BENCHMARKS.md alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: `python bench/gpu_check.py`

START, END = "<!-- gpu-check:start", "<!-- gpu-check:end -->"


@dataclass
class Plan:
    """What the check runs: a GPU's full check, or the CPU dry run of the same code."""

    dry_run: bool
    models: list[str]
    segment_length: int
    time_horizon: int
    deepspeed: str
    lanes: int  # where no memory probe is possible (the CPU)
    warmup_steps: int
    timed_steps: int
    correctness_length: int  # the correctness batches' width: a training segment's (<s> + segment + </s>)
    documents: int
    budget_s: float
    needs_s: dict = field(default_factory=dict)  # a phase starts only with this much time left

    @classmethod
    def for_machine(cls, dry_run: bool, budget_s: float, models: list[str] | None) -> Plan:
        if dry_run:
            return cls(True, models or ["tiny"], 64, 2, "ds_configs/zero2_fp32.json", 2, 1, 3, 66, 60, budget_s,
                       {"correctness": 5, "probe": 5, "eager": 5, "compiled": 10})  # fmt: skip
        return cls(False, models or ["membart-base", "membart-large"], 512, 4, "ds_configs/zero2.json", 8, 2, 4, 514,
                   400, budget_s, {"correctness": 30, "probe": 25, "eager": 30, "compiled": 100})  # fmt: skip


class OutOfTime(Exception):
    pass


class Budget:
    """The check's time: phases that need more than is left are skipped; a SIGALRM at the deadline stops the
    phase that runs (Python code is interrupted between operations) so the results are still written."""

    def __init__(self, seconds: float):
        self.started = time.perf_counter()
        self.deadline = self.started + seconds
        self.phases: list[dict] = []
        signal.signal(signal.SIGALRM, self._expired)
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def _expired(self, *_):
        raise OutOfTime

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    @contextmanager
    def phase(self, name: str, needs_s: float):
        """Runs the block unless less than `needs_s` is left; records and prints its time and outcome."""
        record = {"phase": name, "status": "ok"}
        self.phases.append(record)
        if self.left() < needs_s:
            record["status"] = f"skipped: {self.left():.0f} s left, needs ~{needs_s:.0f} s"
            print(f"[{self.elapsed():6.1f} s] {name}: {record['status']}", flush=True)
            yield None
            return
        started = time.perf_counter()
        print(f"[{self.elapsed():6.1f} s] {name} ...", flush=True)
        try:
            yield record
        except OutOfTime:
            record["status"] = "stopped: the time budget ran out"
        except Exception as error:  # a failing phase is a result: report it and go on with the others
            record["status"] = f"failed: {type(error).__name__}: {error}"
            record["traceback"] = traceback.format_exc()[-3000:]
        record["seconds"] = round(time.perf_counter() - started, 1)
        print(f"[{self.elapsed():6.1f} s] {name}: {record['status']} ({record['seconds']} s)", flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


def environment(runtime) -> dict:
    import deepspeed
    import torch
    import transformers

    env = {
        "device": runtime.device.type,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "deepspeed": deepspeed.__version__,
    }
    if runtime.device.type == "cuda":
        props = torch.cuda.get_device_properties(runtime.device)
        env.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count)
    else:
        env.update(name=f"CPU {platform.processor() or platform.machine()}", cores=os.cpu_count())
    return env


def correctness(plan: Plan, budget: Budget, runtime, results: dict) -> None:
    from bench import gpu_correctness as checks

    preset = "tiny" if plan.dry_run else "membart-base"
    for name, run in (
        ("device vs CPU, bf16 vs fp32", checks.device_vs_cpu),
        ("memory resets, generate", checks.memory_resets_and_generate),
        ("fused attention kernels", checks.attention_kernels),
    ):
        with budget.phase(f"correctness: {name}", plan.needs_s["correctness"]) as phase:
            if phase is not None:
                results["checks"] += run(preset, runtime.device, plan.correctness_length)


def throughput(plan: Plan, budget: Budget, runtime, shards: Path, work: Path, results: dict) -> None:
    from bench import gpu_throughput as bench

    lanes = {}
    for preset in plan.models:  # eager first for every model: the figures that matter most if time runs out
        for replay in (False, True):
            mode = "replay" if replay else "bptt"
            with budget.phase(f"{preset} {mode}: lane probe", plan.needs_s["probe"]) as phase:
                if phase is not None:
                    probe = bench.probe_lanes(plan, shards, work / "probe", runtime, preset, replay)
                    lanes[preset, replay] = probe["lanes"]
                    phase.update(probe)
    for compiled in (False, True):
        for preset in plan.models:
            for replay in (False, True):
                name = f"{preset} {'replay' if replay else 'bptt'} {'compiled' if compiled else 'eager'}"
                needs = plan.needs_s["compiled" if compiled else "eager"]
                with budget.phase(name, needs) as phase:
                    if phase is None:
                        continue
                    if (preset, replay) not in lanes:
                        phase["status"] = "skipped: its lane probe did not run"
                        continue
                    cfg = bench.run_config(plan, shards, work / name.replace(" ", "-"), preset,
                                           lanes[preset, replay], replay=replay, compiled=compiled)  # fmt: skip
                    count_syncs = runtime.device.type == "cuda" and not compiled
                    measured = bench.measure(plan, cfg, runtime, preset, count_syncs=count_syncs)
                    results["throughput"].append({"model": preset, "replay": replay, "compiled": compiled,
                                                  **measured})  # fmt: skip


def table(results: dict) -> str:
    lines = ["| check | value | must be | passed |", "|---|---|---|---|"]
    for c in results["checks"]:
        lines.append(f"| {c['name']} | {c['value']:.3g} | {c['bound']} {c['tolerance']:.3g} | "
                     f"{'yes' if c['passed'] else '**no**'} |")  # fmt: skip
    lines += ["", "| model | backprop | compile | lanes | tokens/s | MFU | peak GiB | data wait | loader CPU | step s "
              "| compile s |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["throughput"]:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "—"
        peak = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "—"
        compile_s = f"{r['compile_s']:.0f}" if r["compile_s"] is not None else "—"
        if r.get("compiles_in_timed_steps"):
            compile_s += f" ({r['compiles_in_timed_steps']} in the timed steps)"
        lines.append(f"| {r['model']} | {'replay' if r['replay'] else 'BPTT'} | {'yes' if r['compiled'] else 'no'} | "
                     f"{r['lanes']} | {r['tokens_per_s']:,.0f} | {mfu} | {peak} | {r['data_wait_share']:.1%} | "
                     f"{r['loader_cpu_share']:.1%} | {r['step_time_s']:.3f} | {compile_s} |")  # fmt: skip
    lines += ["", "| phase | status | seconds |", "|---|---|---|"]
    for p in results["phases"]:
        lines.append(f"| {p['phase']} | {p['status'].splitlines()[0][:90]} | {p.get('seconds', '')} |")
    return "\n".join(lines)


def benchmarks_section(results: dict, command: str) -> str:
    env = results["environment"]
    syncs = next((r["host_syncs_per_step"] for r in results["throughput"] if "host_syncs_per_step" in r), None)
    memory = f"{env['memory_gib']} GiB, {env['sms']} SMs" if "memory_gib" in env else f"{env['cores']} cores"
    lines = [
        f"{START} (written by bench/gpu_check.py on a GPU; `make bench` keeps it) -->",
        f"- Device: {env['name']} ({memory}), torch {env['torch']} (CUDA {env['cuda']}), "
        f"transformers {env['transformers']}, DeepSpeed {env['deepspeed']}, Python {env['python']}",
        f"- Command: `{command}`, {results['date']}, {results['seconds']:.0f} s in all",
        "",
        table(results),
    ]
    if syncs is not None:
        lines += ["", "Host synchronisations in one eager BPTT step, by origin: " + json.dumps(syncs)]
    return "\n".join(lines + [END])


def rewrite_benchmarks(section: str, path: Path = REPO / "BENCHMARKS.md") -> None:
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path}: no GPU section markers ({START} ... {END}) to rewrite")
    head, rest = text.split(START, 1)
    path.write_text(head + section + rest.split(END, 1)[1])


def run_phases(plan: Plan, budget: Budget, work: Path, results: dict) -> None:
    with budget.phase("start: runtime, corpus", 0) as phase:
        from bench.gpu_throughput import make_corpus
        from memformers.training.distributed import init_runtime

        runtime = init_runtime()
        results["environment"] = environment(runtime)
        shards = make_corpus(work, plan.segment_length, plan.documents)
    if phase["status"] == "ok":
        correctness(plan, budget, runtime, results)
        throughput(plan, budget, runtime, shards, work, results)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the CPU run of the same code (default without CUDA)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="time guard for the whole check (seconds)")
    parser.add_argument("--models", help="comma-separated presets (default: membart-base,membart-large; dry: tiny)")
    parser.add_argument("--output", default=str(REPO / "runs" / "gpu-check"), help="where results.json goes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    dry_run = args.dry_run or not torch.cuda.is_available()
    if dry_run:
        os.environ["DS_ACCELERATOR"] = "cpu"
        print("no CUDA device (or --dry-run): the dry run, the same code on the CPU with the tiny preset", flush=True)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # less fragmentation
    budget = Budget(args.budget_s)
    plan = Plan.for_machine(dry_run, args.budget_s, args.models.split(",") if args.models else None)
    results = {"plan": asdict(plan), "date": time.strftime("%Y-%m-%d %H:%M"), "checks": [], "throughput": []}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        try:
            run_phases(plan, budget, Path(tmp), results)
        except OutOfTime:  # between two phases
            budget.phases.append({"phase": "the rest", "status": "stopped: the time budget ran out"})
    budget.stop()
    results["phases"], results["seconds"] = budget.phases, budget.elapsed()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("\n" + table(results) + f"\n\nwrote {output / 'results.json'} ({budget.elapsed():.0f} s)")
    section = benchmarks_section(results, "make gpu-check")
    if dry_run:  # the same section, beside results.json: the code that writes it runs in the dry run too
        (output / "benchmarks-section.md").write_text(section + "\n")
        print(f"dry run: BENCHMARKS.md is kept; a GPU run's section of it is in {output / 'benchmarks-section.md'}")
    else:
        rewrite_benchmarks(section)
        print("rewrote the GPU section of BENCHMARKS.md")
    failed = [c["name"] for c in results["checks"] if not c["passed"]]
    failed += [p["phase"] for p in budget.phases if p["status"].startswith(("failed", "stopped"))]
    return 1 if failed or not results["checks"] else 0


if __name__ == "__main__":
    sys.exit(main())
