"""`make demo`: the whole product on a CPU, with the scripts a cluster user runs.

    synthetic long documents (data_prep/make_synthetic.py)
      → tokenizer (data_prep/train_tokenizer.py) → shards (data_prep/shard_documents.py)
      → DeepSpeed pretraining of the tiny MemBART, 2 processes, ZeRO-2 (pretrain/train.py, pretrain/configs/demo.yaml)
      → evaluation → Hugging Face export (pretrain/export_hf.py)
      → the export, loaded with `trust_remote_code`, recalls facts stated segments earlier — next to itself with
        the memory reset

Writes RUN/results.json, RUN/curves.png and prints a results table. `--steps`, `--docs` make it shorter or longer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from memformers.plots import plot_run

REPO = Path(__file__).resolve().parents[1]
SEGMENT_LENGTH = 64
"""Tokens per segment: 64 holds ~7 back-to-back statements, the density of facts the memory's write needs to be
learnt (NOTES.md, session 6)."""
PY = sys.executable


def stage(title: str) -> None:
    print(f"\n=== {title} {'=' * max(0, 100 - len(title))}", flush=True)


def sh(*cmd: str, env: dict | None = None) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def launcher_env() -> dict:
    """CPU DeepSpeed unless a GPU is present; one thread per rank so 2 ranks share 2 cores without thrashing."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    import torch

    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_SILENT", "true")
    return env


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return [x for x in lines if "loss" in x], [x for x in lines if "eval_loss" in x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="everything goes here (replaced unless --keep)")
    parser.add_argument("--docs", type=int, default=3000, help="synthetic documents")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: demo.yaml's)")
    parser.add_argument("--nproc", type=int, default=2, help="training processes")
    parser.add_argument("--probe-docs", type=int, default=100, help="held-out documents for the recall probe")
    parser.add_argument("--keep", action="store_true", help="reuse an existing --out (resumes training)")
    args = parser.parse_args(argv)

    out = (REPO / args.out).resolve()
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus, tokenizer_dir, shards = out / "corpus.jsonl", out / "tokenizer", out / "shards"
    probe_corpus = out / "probe.jsonl"
    run_dir, export_dir = out / "run", out / "export"
    env = launcher_env()
    started = time.time()

    stage("1/5 data: synthetic long documents → tokenizer → shards")
    if not shards.is_dir():
        make_data(corpus, probe_corpus, tokenizer_dir, shards, docs=args.docs, probe_docs=args.probe_docs)

    stage(f"2/5 pretraining: DeepSpeed ZeRO-2, {args.nproc} processes")
    overrides = [f"run_dir={run_dir}", f"data.path={shards}"]
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    sh(
        str(Path(PY).parent / "deepspeed"),
        f"--num_gpus={args.nproc}",
        "pretrain/train.py",
        "--config",
        "pretrain/configs/demo.yaml",
        *overrides,
        env=env,
    )

    stage("3/5 export to Hugging Face format")
    sh(PY, "pretrain/export_hf.py", "--run-dir", str(run_dir), "--output", str(export_dir), "--force")

    stage("4/5 recall through memory, on held-out documents")
    results = probe(export_dir, probe_corpus, shards)

    stage("5/5 results")
    steps, evals = read_metrics(run_dir)
    results = summarize(steps, evals, results, minutes=round((time.time() - started) / 60, 1))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_run(run_dir, out / "curves.png")
    print_table(results)
    print(f"\nwrote {out / 'results.json'} and {out / 'curves.png'}; the model is in {export_dir}")
    return 0


def make_data(
    corpus: Path, probe_corpus: Path, tokenizer_dir: Path, shards: Path, *, docs: int, probe_docs: int
) -> None:
    """The training corpus, the probe's held-out corpus, a tokenizer and the shards, with the shipped scripts.

    The curriculum the memory needs (experiments/NOTES.md, session 6): each document opens with its fact stated
    1..16 times back to back (short keys: ~7 statements per fresh 64-token segment; the memory learns to write a
    fact only when it arrives dense and in a memory that holds nothing of the document yet), then recalls it in 8
    rounds from 0-1 segments after the statements on. The probe's held-out documents state their fact once,
    >= 2 segments before its recall.
    """
    curriculum = (
        "--facts-per-doc 1 --max-repeats 16 --repeat-filler-words 0 --lead-words 0 --short-keys "
        "--gap-words 8 --recalls-per-fact 8 --recall-spacing-words 12 --no-progress"
    ).split()
    held_out = f"--seed 1000 --facts-per-doc 1 --short-keys --gap-words {2 * SEGMENT_LENGTH} --no-progress".split()
    make = (PY, "data_prep/make_synthetic.py")
    sh(*make, "--output", str(corpus), "--num-docs", str(docs), *curriculum)
    sh(*make, "--output", str(probe_corpus), "--num-docs", str(probe_docs), *held_out)
    sh(
        PY,
        "data_prep/train_tokenizer.py",
        "--input",
        str(corpus),
        "--vocab-size",
        "1000",
        "--output",
        str(tokenizer_dir),
    )
    sh(
        PY,
        "data_prep/shard_documents.py",
        "--input",
        str(corpus),
        "--tokenizer",
        str(tokenizer_dir),
        "--output",
        str(shards),
        "--segment-length",
        str(SEGMENT_LENGTH),
        "--val-fraction",
        "0.05",
    )


def summarize(steps: list[dict], evals: list[dict], recall: dict, minutes: float) -> dict:
    """results.json: throughput (median), final loss (last 20 steps), the last evaluation, recall, size, time."""
    tail = steps[-20:]
    return {
        "tokens_per_s": sorted(s["tokens_per_s"] for s in steps)[len(steps) // 2],
        "final_loss": sum(s["loss"] for s in tail) / len(tail),
        "eval_loss": evals[-1]["eval_loss"],
        "eval_loss_no_memory": evals[-1]["eval_loss_no_memory"],
        "memory_gain": evals[-1]["memory_gain"],
        **recall,
        "steps": steps[-1]["step"],
        "tokens": steps[-1]["tokens"],
        "minutes": minutes,
    }


def probe(export_dir: Path, corpus: Path, shards: Path) -> dict:
    """Load the export as a user would (remote code), run the recall probe on the held-out documents of `corpus`
    (another seed than the training corpus, each fact stated once), show a few recalls."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from memformers.data import read_manifest
    from memformers.recall import recall_probe, value_set

    manifest = read_manifest(shards)
    held_out = [json.loads(line) for line in corpus.read_text().splitlines()]
    model = AutoModelForSeq2SeqLM.from_pretrained(export_dir, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(export_dir, trust_remote_code=True)  # v5 asks otherwise
    values = sorted(value_set(held_out[0]["num_values"]))
    result = recall_probe(model, tokenizer, held_out, segment_length=manifest["segment_length"], values=values)
    print(
        f"{result.facts} facts in {len(held_out)} held-out documents, each recalled >= 2 segments after it was "
        f"stated; {len(values)} possible values (chance {result.chance:.1%})"
    )
    for example in result.examples[:3]:
        print(
            f"  the code of {example['key']} is {example['value']} ({example['segments_after_statement']} segments "
            f"earlier) → with memory: {example['predicted_with_memory']}, memory reset: "
            f"{example['predicted_without_memory']}"
        )
    return result.as_dict()


def print_table(results: dict) -> None:
    rows = [
        ("training throughput", f"{results['tokens_per_s']:,.0f} tokens/s"),
        ("final training loss", f"{results['final_loss']:.3f}"),
        ("eval loss, memory carried", f"{results['eval_loss']:.4f}"),
        ("eval loss, memory reset", f"{results['eval_loss_no_memory']:.4f}"),
        ("memory gain", f"{results['memory_gain']:+.4f} nats/token"),
        ("recall, memory carried", f"{results['recall_with_memory']:.1%}"),
        ("recall, memory reset", f"{results['recall_without_memory']:.1%}"),
        ("recall by chance", f"{results['recall_chance']:.1%}"),
        ("steps / tokens / minutes", f"{results['steps']} / {results['tokens']:,} / {results['minutes']}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
