"""The corpus as the trainer reads it: a SHARD_DIR's manifest and tokenizer, BART's noise applied to every segment,
and this rank's segment streams of a split (`data.lanes` documents side by side)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memformers.data import SegmentStreamLoader, load_tokenizer, read_manifest, special_ids
from memformers.noising import BartDenoiser, DenoisingConfig, token_tables

from .config import DataSection
from .distributed import Runtime


@dataclass
class Corpus:
    data: DataSection
    runtime: Runtime
    seed: int
    """Document order (with the epoch) and noise (with the segment) derive from it."""
    manifest: dict
    tokenizer: Any
    special: dict[str, int]
    """The tokenizer's special token ids (`pad`, `bos`, `eos`, `mask`, …)."""
    denoiser: BartDenoiser

    @classmethod
    def open(cls, data: DataSection, noise: DenoisingConfig, *, seed: int, runtime: Runtime) -> Corpus:
        manifest = read_manifest(data.path)
        tokenizer = load_tokenizer(data.path)
        special = special_ids(tokenizer)
        denoiser = BartDenoiser(
            noise,
            token_tables(tokenizer),
            mask_id=special["mask"],
            bos_id=special["bos"],
            eos_id=special["eos"],
            pad_id=special["pad"],
            vocab_size=len(tokenizer),
            seed=seed,
        )
        return cls(data, runtime, seed, manifest, tokenizer, special, denoiser)

    @property
    def segment_length(self) -> int:
        return self.manifest["segment_length"]

    @property
    def has_val(self) -> bool:
        return self.manifest["splits"].get("val", {}).get("documents", 0) > 0

    def stream(self, split: str, epochs: int | None) -> SegmentStreamLoader:
        """This rank's noised segment batches of `split`, `epochs` passes (None: endless)."""
        return SegmentStreamLoader(
            self.data.path,
            split,
            rank=self.runtime.rank,
            world_size=self.runtime.world_size,
            lanes=self.data.lanes,
            segment_length=self.segment_length,
            seed=self.seed,
            epochs=epochs,
            transform=self.denoiser.collate,
            prefetch=self.data.prefetch,
        )

    def val_stream(self) -> SegmentStreamLoader:
        """One fresh pass over the val split."""
        return self.stream("val", 1)
