"""The synthetic long-range-dependency corpus (memformers.recall.corpus, data_prep/make_synthetic.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import REPO, SEGMENT_LENGTH

from memformers.data import load_tokenizer, segment_ends, sentence_end_table  # noqa: E402
from memformers.recall import (  # noqa: E402
    FILLER_WORDS,
    VALUE_WORDS,
    SyntheticConfig,
    chance_level,
    make_document,
    value_set,
)


def test_deterministic_from_seed() -> None:
    config = SyntheticConfig(seed=3)
    assert make_document(5, config) == make_document(5, config)
    assert make_document(5, config) != make_document(5, SyntheticConfig(seed=4))
    assert make_document(5, config) != make_document(6, config)


def test_records_and_facts(synthetic_docs: list) -> None:
    values = set(value_set(16))
    assert chance_level(16) == pytest.approx(1 / 16)
    for doc in synthetic_docs:
        assert set(doc) >= {"id", "text", "facts", "chance"} and doc["chance"] == pytest.approx(1 / 16)
        text = doc["text"]
        keys = [f["key"] for f in doc["facts"]]
        assert len(doc["facts"]) == 4 and len(set(keys)) == 4
        for fact in doc["facts"]:
            assert fact["value"] in values
            assert fact["statement"] == f"The code of {fact['key']} is {fact['value']}."
            # the recall has the statement's surface form
            assert fact["question"] == "Recall: t" + fact["statement"][1:]
            assert text.count(fact["statement"]) == 1 and text.count(fact["question"]) == 1
            assert text.index(fact["statement"]) < text.index(fact["question"])
        filler = text
        for fact in doc["facts"]:
            filler = filler.replace(fact["question"], " ").replace(fact["statement"], " ")
        words = {w.lower() for w in re.findall(r"[A-Za-z]+", filler)}
        assert not words & {k.lower() for k in keys}, "filler mentions a key"
        assert not words & set(VALUE_WORDS), "filler mentions a value"
        assert words <= FILLER_WORDS


def test_values_are_uniform_over_the_closed_set() -> None:
    config = SyntheticConfig(seed=1, num_values=4)
    counts: dict[str, int] = {}
    for i in range(300):
        for fact in make_document(i, config)["facts"]:
            counts[fact["value"]] = counts.get(fact["value"], 0) + 1
    assert set(counts) == set(value_set(4))
    assert min(counts.values()) > 0.8 * 300  # 1200 draws, 300 expected each


def test_recalls_are_at_least_two_segments_after_their_statements(synthetic_docs: list, bpe_tokenizer: Path) -> None:
    tokenizer = load_tokenizer(bpe_tokenizer)
    backend = tokenizer.backend_tokenizer
    table = sentence_end_table(tokenizer)
    lengths = []
    for doc in synthetic_docs:
        encoding = backend.encode(doc["text"], add_special_tokens=False)
        ends = segment_ends(np.array(encoding.ids), table, SEGMENT_LENGTH)
        lengths.append(ends.size)
        starts = np.array([s for s, _ in encoding.offsets])

        def segment_of(char: int) -> int:
            token = int(np.searchsorted(starts, char, side="right")) - 1
            return int(np.searchsorted(ends, token, side="right"))

        for fact in doc["facts"]:
            stated = doc["text"].index(fact["statement"]) + len(fact["statement"]) - 1
            recalled = doc["text"].index(fact["question"])
            assert segment_of(recalled) - segment_of(stated) >= 2, (doc["id"], fact)
    assert 6 <= np.mean(lengths) <= 12 and min(lengths) >= 5


def test_repeated_statements_and_rounds_of_recalls() -> None:
    config = SyntheticConfig(seed=5, facts_per_doc=2, max_repeats=4, recalls_per_fact=3, recall_spacing_words=30)
    seen_repeats = set()
    for i in range(60):
        doc = make_document(i, config)
        text = doc["text"]
        last_statement = max(text.rindex(f["statement"]) for f in doc["facts"])
        for fact in doc["facts"]:
            assert 1 <= fact["repeats"] <= 4 and text.count(fact["statement"]) == fact["repeats"]
            seen_repeats.add(fact["repeats"])
            recalls = [m.start() for m in re.finditer(re.escape(fact["question"]), text)]
            assert len(recalls) == 3 and recalls[0] > last_statement
            # rounds are at least recall_spacing_words of filler apart (the other fact's recall may sit between)
            for a, b in zip(recalls, recalls[1:]):
                between = text[a + len(fact["question"]) : b]
                for other in doc["facts"]:
                    between = between.replace(other["question"], " ")
                assert len(between.split()) >= 30
    assert seen_repeats == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="recalls_per_fact"):
        SyntheticConfig(recalls_per_fact=0)


def test_lead_words_puts_the_first_statement_at_the_start() -> None:
    # the memory learns to write a fact most easily when it is fresh (NOTES.md): lead_words 0 opens every document
    # with its first statement; the default keeps up to 30 words of filler before it
    for i in range(20):
        doc = make_document(i, SyntheticConfig(seed=7, lead_words=0))
        assert doc["text"].startswith(doc["facts"][0]["statement"])
    leads = [make_document(i, SyntheticConfig(seed=7))["text"].index("The code of") for i in range(20)]
    assert max(leads) > 0
    with pytest.raises(ValueError, match="lead_words"):
        SyntheticConfig(lead_words=-1)


def test_short_keys_are_one_syllable_and_pack_statements_densely(bpe_tokenizer: Path) -> None:
    tokenizer = load_tokenizer(bpe_tokenizer)
    short = SyntheticConfig(seed=2, facts_per_doc=3, short_keys=True)
    lengths = {False: [], True: []}
    for i in range(30):
        doc = make_document(i, short)
        for fact in doc["facts"]:
            key = fact["key"].lower()
            assert 3 <= len(key) <= 6 and key not in FILLER_WORDS and key not in VALUE_WORDS
        assert len({f["key"] for f in doc["facts"]}) == 3
        for is_short, d in ((True, doc), (False, make_document(i, SyntheticConfig(seed=2, facts_per_doc=3)))):
            lengths[is_short] += [
                len(tokenizer(f["statement"], add_special_tokens=False)["input_ids"]) for f in d["facts"]
            ]
    assert np.mean(lengths[True]) < np.mean(lengths[False]) - 1
    with pytest.raises(ValueError, match="short_keys"):
        SyntheticConfig(short_keys=True, facts_per_doc=101)


def test_make_synthetic_script(tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "data_prep" / "make_synthetic.py"),
            "--output",
            str(out),
            "--num-docs",
            "3",
            "--seed",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "chance level of a recall: 0.0625" in run.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records == [make_document(i, SyntheticConfig(seed=2)) for i in range(3)]
    bad = subprocess.run(
        [
            sys.executable,
            str(REPO / "data_prep" / "make_synthetic.py"),
            "--output",
            str(out),
            "--num-docs",
            "3",
            "--num-values",
            "99",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "num_values" in bad.stderr
