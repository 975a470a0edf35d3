"""`make bench`: run every benchmark of the project and rewrite BENCHMARKS.md.

    python bench/run_all.py [--quick] [--only model,engine,data]

Each module measures ratios side by side in one run (see its docstring); this script only collects them. Each
benchmark runs in its own process, so one's threads, allocations and process group never affect another's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine  # noqa: E402

MODULES = {
    "model": ("bench.bench_model", "MemBART vs BART (issue: model overhead)"),
    "engine": ("bench.bench_engine", "Training engine: step efficiency, memory replay"),
    "data": ("bench.bench_data", "Data pipeline: sharding and loader throughput"),
    "stream": ("bench.bench_stream", "Stream scheduling at scale: epoch planning, resume and each batch, per rank"),
}


def run_module(module: str, quick: bool) -> list[dict]:
    cmd = [sys.executable, "-m", module, *(["--quick"] if quick else [])]
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)},
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def render(sections: dict[str, list[dict]], quick: bool) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Every figure is a ratio of two things measured side by side in the same run, so it says how this code",
        "compares with its baseline rather than how fast one machine is. Regenerate with `make bench`",
        f"(`python bench/run_all.py{' --quick' if quick else ''}`).",
        "",
        f"- Machine: {machine()}",
        f"- Date: {datetime.date.today().isoformat()}",
        "",
        "| benchmark | result | target | met | command |",
        "|---|---|---|---|---|",
    ]
    for results in sections.values():
        for r in results:
            met = {True: "yes", False: "**no**", None: ""}[r["passed"]]
            lines.append(
                f"| {r['name']} | {r['value']} {'' if r['unit'] == 'ratio' else r['unit']} | "
                f"{r['target']} | {met} | `{r['command']}` |"
            )
    lines.append("")
    for key, results in sections.items():
        lines += [f"## {MODULES[key][1]}", ""]
        for r in results:
            lines.append(f"**{r['name']}** = {r['value']} (target {r['target']})")
            lines.append("")
            lines += [f"- {k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in r["detail"].items()]
            lines.append("")
    return "\n".join(lines)


def gpu_section(benchmarks: Path) -> str:
    """BENCHMARKS.md's GPU section as it stands: `make gpu-check` writes it on a GPU, `make bench` keeps it."""
    text = benchmarks.read_text() if benchmarks.is_file() else ""
    start = text.find("\n## GPU")
    return text[start:] if start >= 0 else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats")
    parser.add_argument("--only", default=",".join(MODULES), help="comma-separated subset of " + ",".join(MODULES))
    args = parser.parse_args()
    # results of every benchmark, kept so that `--only` refreshes some sections and keeps the others
    store = REPO / "bench" / "results.json"
    sections = json.loads(store.read_text()) if store.is_file() else {}
    for key in args.only.split(","):
        print(f"running {MODULES[key][0]} ...", flush=True)
        sections[key] = run_module(MODULES[key][0], args.quick)
        for r in sections[key]:
            print(f"  {r['name']}: {r['value']} (target {r['target']})", flush=True)
    sections = {key: sections[key] for key in MODULES if key in sections}
    store.write_text(json.dumps(sections, indent=2) + "\n")
    benchmarks = REPO / "BENCHMARKS.md"
    (REPO / "BENCHMARKS.md").write_text(render(sections, args.quick) + gpu_section(benchmarks))
    print(f"wrote {REPO / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
