"""The recall probe (memformers.recall) that `make demo` reports: which facts it probes, and what it returns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_fixtures import SEGMENT_LENGTH

from memformers.data import load_tokenizer  # noqa: E402
from memformers.models.membart import MemBartForConditionalGeneration, load_preset  # noqa: E402
from memformers.recall import recall_probe, value_set  # noqa: E402


@pytest.fixture(scope="module")
def untrained(bpe_tokenizer: Path):
    torch.manual_seed(0)
    tokenizer = load_tokenizer(bpe_tokenizer)
    return MemBartForConditionalGeneration(load_preset("tiny", vocab_size=len(tokenizer))), tokenizer


def test_probes_every_fact_recalled_min_gap_segments_later(untrained, synthetic_docs: list) -> None:
    model, tokenizer = untrained
    docs = synthetic_docs[:6]
    values = sorted(value_set(16))
    result = recall_probe(model, tokenizer, docs, segment_length=SEGMENT_LENGTH, values=values, min_gap=2)
    # the corpus puts every recall >= 2 segments after its statement (test_data_synthetic), so all are probed
    assert result.facts == sum(len(d["facts"]) for d in docs)
    assert result.chance == pytest.approx(1 / 16)
    assert 0 <= result.with_memory <= 1 and 0 <= result.without_memory <= 1
    facts = {(f["key"], f["value"]) for d in docs for f in d["facts"]}
    assert result.examples and all((e["key"], e["value"]) in facts for e in result.examples)
    assert all(e["segments_after_statement"] >= 2 for e in result.examples)
    assert all(
        e["predicted_with_memory"] in values and e["predicted_without_memory"] in values for e in result.examples
    )
    assert not model.training  # the probe puts the model in eval mode (no dropout in the scores)
    assert recall_probe(model, tokenizer, docs, segment_length=SEGMENT_LENGTH, values=values, min_gap=50).facts == 0
