"""The corpus as the trainer reads it: one SHARD_DIR or a weighted mixture of several (`data.sources`), their
manifest and shared tokenizer, BART's noise applied to every segment, and this rank's segment streams of a split
(`data.lanes` documents side by side)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memformers.data import SegmentStreamLoader, check_mixable, load_tokenizer, read_manifest, special_ids
from memformers.noising import BartDenoiser, DenoisingConfig

from .config import DataSection, DataSource
from .distributed import Runtime


@dataclass
class Corpus:
    data: DataSection
    runtime: Runtime
    seed: int
    """Document order (with the epoch) and noise (with the segment) derive from it."""
    sources: list[DataSource]
    """What is trained on: one source, or the mixture's (names resolved)."""
    manifests: list[dict]
    """Each source's manifest, in the order of `sources`."""
    tokenizer: Any
    special: dict[str, int]
    """The tokenizer's special token ids (`pad`, `bos`, `eos`, `mask`, …)."""
    denoiser: BartDenoiser

    @classmethod
    def open(cls, data: DataSection, noise: DenoisingConfig, *, seed: int, runtime: Runtime) -> Corpus:
        """Read the sources' manifests (a mixture's must share tokenizer and segment length) and the tokenizer."""
        sources = data.corpora()
        manifests = [read_manifest(source.path) for source in sources]
        if len(sources) > 1:
            check_mixable([(s.name, Path(s.path), m) for s, m in zip(sources, manifests)])
        tokenizer = load_tokenizer(sources[0].path)
        special = special_ids(tokenizer)
        denoiser = BartDenoiser.for_tokenizer(noise, tokenizer, seed=seed)
        return cls(data, runtime, seed, sources, manifests, tokenizer, special, denoiser)

    @property
    def manifest(self) -> dict:
        """The first source's manifest (segment length and tokenizer are the same in all)."""
        return self.manifests[0]

    @property
    def names(self) -> list[str]:
        return [source.name for source in self.sources]

    @property
    def segment_length(self) -> int:
        return self.manifest["segment_length"]

    def val_sources(self) -> list[int]:
        """The sources with a non-empty val split (a source without one has no evaluation of its own)."""
        return [i for i, m in enumerate(self.manifests) if m["splits"].get("val", {}).get("documents", 0) > 0]

    @property
    def has_val(self) -> bool:
        return bool(self.val_sources())

    def stream(self, split: str, epochs: int | None) -> SegmentStreamLoader:
        """This rank's noised segment batches of `split` of every source (mixed by weight), `epochs` passes
        (None: endless; a mixture ends when its first source would start pass epochs + 1)."""
        producer = self.runtime.loader_producer if self.data.producer == "auto" else self.data.producer
        return self._loader([s.path for s in self.sources], split, epochs, producer)

    def val_stream(self, source: int = 0) -> SegmentStreamLoader:
        """One fresh pass over source `source`'s val split (made in a thread: short, and started often)."""
        return self._loader([self.sources[source].path], "val", 1, "thread")

    def _loader(self, paths: list[str], split: str, epochs: int | None, producer: str) -> SegmentStreamLoader:
        mixed = len(paths) > 1
        return SegmentStreamLoader(
            paths if mixed else paths[0],
            split,
            weights=[s.weight for s in self.sources] if mixed else None,
            names=self.names if mixed else None,
            rank=self.runtime.rank,
            world_size=self.runtime.world_size,
            lanes=self.data.lanes,
            segment_length=self.segment_length,
            seed=self.seed,
            epochs=epochs,
            transform=self.denoiser.collate,
            prefetch=self.data.prefetch,
            pin_memory=self.runtime.pin_memory,
            producer=producer,
        )
