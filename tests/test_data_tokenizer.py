"""Tokenizer training, loading, checks and the sentence-end table (memformers.data.tokenizer*)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import varied_texts

from memformers.data import (  # noqa: E402
    TokenizerError,
    load_tokenizer,
    sentence_end_table,
    shard_documents,
    special_ids,
    tokenizer_sha256,
    train_tokenizer,
)

BART_IDS = {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 4}


@pytest.mark.parametrize("which", ["bpe_tokenizer", "unigram_tokenizer"])
def test_trained_tokenizer_loads_offline_with_bart_special_ids(which: str, request: pytest.FixtureRequest) -> None:
    from transformers import AutoTokenizer

    tok_dir = request.getfixturevalue(which)
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    assert tokenizer.is_fast
    assert special_ids(tokenizer) == BART_IDS
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(5)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    ids = tokenizer("hello memory")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2  # <s> … </s>, as BART's tokenizer


@pytest.mark.parametrize("which", ["bpe_tokenizer", "unigram_tokenizer"])
def test_byte_fallback_round_trip_is_lossless(which: str, request: pytest.FixtureRequest) -> None:
    tokenizer = load_tokenizer(request.getfixturevalue(which))
    backend = tokenizer.backend_tokenizer
    backend.encode_special_tokens = True  # as the sharding workers encode
    texts = varied_texts(20, seed=7) + [
        " leading space",
        "trailing  \n",
        "tabs\tand\u00a0nbsp",
        "ünseen ✓ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃",
        "<s> a <mask> b <0x41>",
    ]
    for text in texts:
        ids = backend.encode(text, add_special_tokens=False).ids
        assert 3 not in ids, f"<unk> in {text!r}"
        assert not set(ids) & {0, 1, 2, 4}, f"special token read from the text of {text!r}"
        assert backend.decode(ids, skip_special_tokens=False) == text


def test_trained_tokenizer_is_deterministic(tmp_path: Path, synthetic_jsonl: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        train_tokenizer([str(synthetic_jsonl)], out, 400, progress=False)
    assert json.loads((a / "tokenizer.json").read_text()) == json.loads((b / "tokenizer.json").read_text())


def test_vocab_size_below_byte_fallback_minimum_is_refused(tmp_path: Path, synthetic_jsonl: Path) -> None:
    with pytest.raises(TokenizerError, match="too small"):
        train_tokenizer([str(synthetic_jsonl)], tmp_path / "t", 200, progress=False)


def _byte_level_bart_dir(tmp_path: Path, texts: list[str]) -> Path:
    """A directory laid out like facebook/bart-base's slow files: config.json, vocab.json, merges.txt."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False
    )
    out = tmp_path / "bart-like"
    out.mkdir()
    bpe.save_model(str(out))
    (out / "config.json").write_text(json.dumps({"model_type": "bart"}))
    return out


def test_existing_hf_tokenizer_directory_works_everywhere(
    tmp_path: Path, synthetic_docs: list, synthetic_jsonl: Path
) -> None:
    from memformers.data import SegmentStreamLoader

    tok_dir = _byte_level_bart_dir(tmp_path, [d["text"] for d in synthetic_docs])
    tokenizer = load_tokenizer(tok_dir)
    ids = special_ids(tokenizer)
    assert ids["bos"] == 0 and ids["pad"] == 1 and ids["eos"] == 2 and ids["mask"] is not None
    shards = tmp_path / "shards"
    shard_documents(
        [str(synthetic_jsonl)], tok_dir, shards, 64, workers=1, val_fraction=0.0, docs_per_shard=50, progress=False
    )
    loaded = load_tokenizer(shards)  # the SHARD_DIR's copy
    assert tokenizer_sha256(loaded) == tokenizer_sha256(tokenizer)
    loader = SegmentStreamLoader(shards, "train", lanes=2, segment_length=64, seed=0, prefetch=0)
    first = next(iter(loader))
    assert first["input_ids"][0, 0] == ids["bos"]
    text = loaded.decode(first["input_ids"][0][first["attention_mask"][0]].tolist(), skip_special_tokens=True)
    assert text.strip() and text.strip() in " ".join(d["text"] for d in synthetic_docs)


def test_tokenizer_without_required_special_tokens_is_an_error(
    tmp_path: Path, synthetic_docs: list, synthetic_jsonl: Path
) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(
        [d["text"] for d in synthetic_docs],
        trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "[PAD]"], show_progress=False),
    )
    tok_dir = tmp_path / "bert-like"
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(
        str(tok_dir)
    )
    with pytest.raises(TokenizerError, match="bos_token, eos_token, mask_token"):
        load_tokenizer(tok_dir)
    with pytest.raises(TokenizerError, match="mask_token"):
        shard_documents([str(synthetic_jsonl)], tok_dir, tmp_path / "shards", 64, workers=0, progress=False)


def test_missing_tokenizer_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


def test_shard_dir_tokenizer_must_match_manifest_hash(
    tmp_path: Path, bpe_tokenizer: Path, synthetic_jsonl: Path
) -> None:
    shards = tmp_path / "shards"
    shard_documents([str(synthetic_jsonl)], bpe_tokenizer, shards, 64, workers=0, progress=False)
    spec_path = shards / "tokenizer" / "tokenizer.json"
    spec = json.loads(spec_path.read_text())
    spec["model"]["vocab"]["extra-piece"] = len(spec["model"]["vocab"])
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="differs from the one the shards were made with"):
        load_tokenizer(shards)


def test_sentence_end_table(bpe_tokenizer: Path) -> None:
    tokenizer = load_tokenizer(bpe_tokenizer)
    table = sentence_end_table(tokenizer)
    assert table.dtype == np.bool_ and table.size == len(tokenizer)
    vocab = tokenizer.get_vocab()
    for piece in (".", "!", "?"):
        assert table[vocab[piece]], piece
    for piece in ("▁the", ",", ";"):
        if piece in vocab:
            assert not table[vocab[piece]], piece
    assert not table[[0, 1, 2, 3, 4]].any()
    ends = [tokenizer.convert_ids_to_tokens(int(i)) for i in np.flatnonzero(table)]
    assert all(tokenizer.convert_tokens_to_string([t]).rstrip()[-1] in ".!?\"'”’»)]}" for t in ends)


def test_one_sentence_end_rule_for_segments_and_noise(bpe_tokenizer: Path, unigram_tokenizer: Path) -> None:
    """Segment cuts (sentence_end_table) and sentence permutation (noising.token_tables) use the same rule."""
    from memformers.data import ends_sentence
    from memformers.noising import token_tables

    for text, expected in [
        ("end.", True),
        ("end.)", True),
        ('say?"', True),
        ("wow!] ", True),
        ("3.5", False),
        (")", False),
        ("a,", False),
        ("", False),
    ]:
        assert ends_sentence(text) == expected, text
    for path in (bpe_tokenizer, unigram_tokenizer):
        tokenizer = load_tokenizer(path)
        assert np.array_equal(sentence_end_table(tokenizer), token_tables(tokenizer).sentence_end), path
