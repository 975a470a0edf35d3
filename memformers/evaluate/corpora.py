"""Stream each corpus's split through an `EvalModel` as training evaluates, and write eval.json / eval.png.

Each corpus is read as the run read it — its ranks × lanes, noise and seed — and scored with and without memory by
`memformers.training.evaluation` (the code the trainer's evaluation runs), so on the same checkpoint and corpus the
figures are the run's own. The run's ranks are streamed one after the other in this one process, each rank's lanes
as one batch: a batch's width is its longest segment, and in bf16 a lane's loss depends on the width it is padded
to (measured: 1e-3 relative on one lane), so batching the run's lanes otherwise would not reproduce its figures.
`lanes` instead streams that many lanes as one rank. The overall figures pool the tokens of every corpus.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from memformers.data import DataError, SegmentStreamLoader, load_tokenizer, read_manifest
from memformers.data.format.manifest import MANIFEST_NAME
from memformers.files import write_json_atomic
from memformers.noising import BartDenoiser, DenoisingConfig
from memformers.training.batches import to_device
from memformers.training.config import EvalSection
from memformers.training.evaluation import evaluation_sums, pooled, summarise

from .models import EvalError, EvalModel

EVAL_JSON, EVAL_PNG = "eval.json", "eval.png"
DEFAULT_SEED = 1234  # PretrainConfig's: what an export without its record is evaluated with


def evaluate_corpora(
    loaded: EvalModel,
    shard_dirs: list[str | Path],
    *,
    split: str = "val",
    lanes: int | None = None,
    max_batches: int | None | str = "run",
    positions: int | None = None,
) -> dict[str, Any]:
    """eval.json's content: the overall figures, `corpora` (each corpus's figures and identity), the `_by_source`
    figures as training logs them, and the model, data and settings used. `max_batches`: "run" (the run's
    eval.max_batches), None (the whole split) or a number; `lanes`: that many lanes on one rank instead of the
    run's ranks × lanes."""
    run_eval = loaded.record.get("eval") or {}
    settings = EvalSection(
        max_batches=run_eval.get("max_batches") if max_batches == "run" else max_batches,
        positions=positions or run_eval.get("positions") or EvalSection.positions,
    )
    ranks, lanes_per_rank = (1, lanes) if lanes else (loaded.layout or (1, 1))
    names = corpus_names([Path(d) for d in shard_dirs])
    sums, corpora = {}, {}
    for name, shard_dir in zip(names, map(Path, shard_dirs)):
        manifest = checked_corpus(loaded, shard_dir, split)
        sums[name] = corpus_sums(loaded, shard_dir, manifest, split, (ranks, lanes_per_rank), settings)
        corpora[name] = {**summarise(sums[name]), "path": str(shard_dir), "split": split}
        corpora[name]["documents"] = manifest["splits"][split]["documents"]
        corpora[name]["manifest_sha256"] = _sha256(shard_dir / MANIFEST_NAME)
    return {
        **pooled(sums),
        "corpora": corpora,
        "model": loaded.identity,
        "settings": {
            "lanes": ranks * lanes_per_rank,
            "layout": {"ranks": ranks, "lanes_per_rank": lanes_per_rank},
            "seed": _seed(loaded),
            "split": split,
            "max_batches": settings.max_batches,
            "positions": settings.positions,
            "noise": loaded.record.get("noise") or dataclasses.asdict(DenoisingConfig()),
        },
    }


def corpus_names(shard_dirs: list[Path]) -> list[str]:
    """The folder names, made distinct (`wiki`, `wiki-2`) where two corpora share one."""
    names: list[str] = []
    for d in shard_dirs:
        name, n = d.name, 1
        while name in names:
            n += 1
            name = f"{d.name}-{n}"
        names.append(name)
    return names


def checked_corpus(loaded: EvalModel, shard_dir: Path, split: str) -> dict:
    """The corpus's manifest, checked to fit the model: its tokenizer, segments within the model's positions, a
    non-empty `split`. EvalError says what differs."""
    try:
        manifest = read_manifest(shard_dir)
    except DataError as error:
        raise EvalError(str(error)) from None
    identity, config = manifest["tokenizer"], loaded.config
    if loaded.tokenizer_sha256 is not None and identity["sha256"] != loaded.tokenizer_sha256:
        raise EvalError(
            f"{shard_dir} was tokenized with another tokenizer than the model's (sha256 {identity['sha256'][:12]}, "
            f"the model's {loaded.tokenizer_sha256[:12]}): re-shard it with the model's tokenizer"
        )
    if identity["vocab_size"] > config.vocab_size or identity["special_ids"].get("pad") != config.pad_token_id:
        raise EvalError(
            f"{shard_dir}'s tokenizer (vocab {identity['vocab_size']}, pad {identity['special_ids'].get('pad')}) does "
            f"not fit the model (vocab {config.vocab_size}, pad {config.pad_token_id}): re-shard it with the model's "
            "tokenizer"
        )
    if manifest["segment_length"] + 2 > config.max_position_embeddings:
        raise EvalError(
            f"{shard_dir} has segments of {manifest['segment_length']} tokens; the model has "
            f"{config.max_position_embeddings} positions (<s> and </s> included): re-shard it with "
            f"--segment-length {config.max_position_embeddings - 2} or less"
        )
    if manifest["splits"].get(split, {}).get("documents", 0) == 0:
        raise EvalError(f"{shard_dir} has no {split!r} split (or it is empty): pass --split with one it has")
    return manifest


def corpus_sums(
    loaded: EvalModel, shard_dir: Path, manifest: dict, split: str, layout: tuple[int, int], settings: EvalSection
) -> torch.Tensor:
    """`evaluation_sums` of one corpus's split (`manifest`: its checked manifest) with the run's noise and seed,
    `layout` = (ranks, lanes per rank): each rank's lanes streamed in turn, their sums added up."""
    denoiser = BartDenoiser.for_tokenizer(
        DenoisingConfig(**(loaded.record.get("noise") or {})), load_tokenizer(shard_dir), seed=_seed(loaded)
    )
    model, config = loaded.model, loaded.config
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    ranks, lanes = layout
    total = torch.zeros(3, settings.positions, dtype=torch.float64)
    for rank in range(ranks):
        stream = SegmentStreamLoader(
            shard_dir, split, rank=rank, world_size=ranks, lanes=lanes, segment_length=manifest["segment_length"],
            seed=_seed(loaded), epochs=1, transform=denoiser.collate,
        )  # fmt: skip
        total += evaluation_sums(
            model,
            (to_device(batch, device) for batch in stream),
            settings,
            memory=model.construct_memory(lanes).to(device, dtype),
            pad_id=config.pad_token_id,
            decoder_start_id=config.decoder_start_token_id,
        ).cpu()
    return total


def write_results(result: dict, out_dir: Path) -> tuple[Path, Path | None]:
    """OUT_DIR/eval.json and OUT_DIR/eval.png (loss by segment position with and without memory, per corpus); the
    picture only where matplotlib is installed (the `plots` extra), else its path is None."""
    from memformers.plots import have_matplotlib, plot_eval

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / EVAL_JSON, result)
    if not have_matplotlib():
        return out_dir / EVAL_JSON, None
    plot_eval(result, out_dir / EVAL_PNG)
    return out_dir / EVAL_JSON, out_dir / EVAL_PNG


def _seed(loaded: EvalModel) -> int:
    seed = loaded.record.get("seed")
    return DEFAULT_SEED if seed is None else int(seed)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
