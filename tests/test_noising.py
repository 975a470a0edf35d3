"""Tests of memformers.noising (BART denoising, fairseq's recipe).

Real tokenizers are trained in-test on a generated corpus (no downloads): a SentencePiece-style unigram
tokenizer ("▁word") and a byte-level BPE ("Ġword", facebook/bart-base style).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from memformers.noising import BartDenoiser, DenoisingConfig, TokenTables, token_tables

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
SEGMENT_LENGTH = 128
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ren",
    "ta",
    "su",
    "vo",
    "zel",
    "pa",
    "dri",
    "on",
    "ex",
    "ul",
    "fi",
    "gro",
    "ne",
    "sha",
    "bu",
    "qui",
    "tor",
    "am",
    "ish",
    "pe",
    "da",
]
ENDINGS = [".", ".", ".", ".", "!", "?", '."', "...", "?)"]


# ------------------------------------------------------------------------------------------ corpus
def make_documents(n_docs: int, seed: int, newlines: bool) -> list[str]:
    """Deterministic pseudo-text: sentences of invented words, commas, decimals like 3.5, varied endings."""
    rng = np.random.default_rng(seed)
    lexicon = sorted({"".join(rng.choice(SYLLABLES, size=rng.integers(1, 5))) for _ in range(700)})
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.integers(25, 45)):
            words = [str(w) for w in rng.choice(lexicon, size=rng.integers(3, 15))]
            words[0] = words[0].capitalize()
            for i in range(len(words) - 1):
                roll = rng.random()
                if roll < 0.08:
                    words[i] += ","
                elif roll < 0.12:
                    words[i] = f"{rng.integers(1, 99)}.{rng.integers(0, 9)}"  # a decimal: not a sentence end
            sentences.append(" ".join(words) + str(rng.choice(ENDINGS)))
        joiners = (
            rng.choice(["\n", " "], size=len(sentences) - 1, p=[0.15, 0.85])
            if newlines
            else [" "] * (len(sentences) - 1)
        )
        docs.append(sentences[0] + "".join(j + s for j, s in zip(joiners, sentences[1:])))
    return docs


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )


def sentencepiece_tokenizer(docs: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(docs, trainers.UnigramTrainer(vocab_size=500, special_tokens=SPECIALS, unk_token="<unk>"))
    return wrap(tok)


def byte_level_tokenizer(docs: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # like facebook/bart-base
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(docs, trainer)
    return wrap(tok)


class Env:
    """A tokenizer, its tables, and the corpus cut into segments <s> + SEGMENT_LENGTH tokens + </s>."""

    def __init__(self, style: str):
        self.style = style
        self.docs = make_documents(40, seed=7, newlines=style == "byte-level")
        self.tokenizer = (sentencepiece_tokenizer if style == "metaspace" else byte_level_tokenizer)(self.docs)
        self.tables = token_tables(self.tokenizer)
        t = self.tokenizer
        self.ids = dict(mask_id=t.mask_token_id, bos_id=t.bos_token_id, eos_id=t.eos_token_id, pad_id=t.pad_token_id)
        self.segments = []  # (doc_id, segment_index, tokens); cuts fall anywhere, also mid-word
        for d, doc in enumerate(self.docs):
            ids = t(doc, add_special_tokens=False)["input_ids"]
            for s, i in enumerate(range(0, len(ids), SEGMENT_LENGTH)):
                body = ids[i : i + SEGMENT_LENGTH]
                seg = np.array([t.bos_token_id, *body, t.eos_token_id], dtype=np.int64)
                self.segments.append((f"doc-{d}", s, seg))

    def denoiser(self, seed: int = 0, **overrides) -> BartDenoiser:
        return BartDenoiser(
            DenoisingConfig(**overrides), self.tables, vocab_size=len(self.tokenizer), seed=seed, **self.ids
        )

    def run(self, denoiser: BartDenoiser, epochs: int = 1):
        """(target, source) for every segment, in each of the epochs (fresh noise per epoch)."""
        return [
            (seg, denoiser.noise(seg, epoch=epoch, doc_id=doc, segment_index=s))
            for epoch in range(epochs)
            for doc, s, seg in self.segments
        ]

    def word_starts(self, seg: np.ndarray) -> np.ndarray:
        """The contract's positional word starts: the table, the first token after <s>, never <s>/</s>."""
        ws = self.tables.word_start[seg].copy()
        ws[1] = True
        ws[0] = ws[-1] = False
        return ws

    def sentences(self, seg: np.ndarray) -> list[tuple[int, ...]]:
        """Sentences of a clean segment: they end after a sentence-end token that is followed by a word
        start (or by </s>)."""
        ws, out, start = self.word_starts(seg), [], 1
        for i in range(1, len(seg) - 1):
            if i == len(seg) - 2 or (self.tables.sentence_end[seg[i]] and ws[i + 1]):
                out.append(tuple(seg[start : i + 1]))
                start = i + 1
        return out


@pytest.fixture(scope="module", params=["metaspace", "byte-level"])
def env(request) -> Env:
    return Env(request.param)


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of True."""
    padded = np.concatenate(([False], flags, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2]))


def aligned(pairs):
    """Pairs whose source has the target's length (no zero-length-span insertion happened)."""
    return [(t, s) for t, s in pairs if len(t) == len(s)]


# ------------------------------------------------------------------------------------- token tables
def test_token_tables_word_starts_count_whitespace_words(env):
    t, tables = env.tokenizer, env.tables
    assert len(tables.word_start) == len(tables.sentence_end) == len(tables.special) == len(t)
    checked = 0
    for doc in env.docs[:10]:
        text = " " + doc  # byte-level BPE marks a word by its leading space; the doc's first word has none
        ids = t(text, add_special_tokens=False)["input_ids"]
        assert int(tables.word_start[ids].sum()) == len(text.split())
        checked += len(ids)
    assert checked > 1000
    for token_id in t.all_special_ids:
        assert tables.word_start[token_id] and tables.special[token_id] and not tables.sentence_end[token_id]
    assert tables.special.sum() == len(SPECIALS)


def test_token_tables_sentence_ends(env):
    t, tables = env.tokenizer, env.tables
    vocab = t.get_vocab()
    marker = "▁" if env.style == "metaspace" else "Ġ"
    words = [p for p in vocab if p.startswith(marker) and p[1:].isalpha()]
    assert words and not tables.sentence_end[[vocab[w] for w in words]].any()
    for text, expected in [
        ("He said hi.", True),
        ("Who?", True),
        ("Wow!", True),
        ("The end,", False),
        ("Pi is 3", False),
        ("Call 3.5", False),
    ]:
        ids = t(text, add_special_tokens=False)["input_ids"]
        assert bool(tables.sentence_end[ids[-1]]) == expected, (text, t.convert_ids_to_tokens(ids))
    # Closing quotes/brackets after the stop still end a sentence; on their own they do not.
    texts = {i: t.convert_tokens_to_string([p]).strip() for p, i in vocab.items() if i not in t.all_special_ids}
    closing = [i for i, x in texts.items() if x and x[-1] in '")' and x.rstrip('")')[-1:] in (".", "?", "!")]
    assert tables.sentence_end[closing].all()
    assert closing or env.style == "metaspace"  # the small unigram vocabulary has no '."' piece
    bare = [i for i, x in texts.items() if x and set(x) <= set('")')]
    assert bare and not tables.sentence_end[bare].any()
    if env.style == "byte-level":  # a line break starts the next word (GPT-2's "Ċ")
        assert tables.word_start[vocab["Ċ"]]


def test_token_tables_byte_fallback_and_added_tokens():
    vocab = {
        p: i
        for i, p in enumerate(
            SPECIALS + ["▁ab", "ab", "▁", ".", '."', "<0x0A>", "<0x20>", "<0xE5>", "<0xAD>", "<0x2E>"]
        )
    }
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    t = wrap(tok)
    t.add_tokens(["<sep>"])  # an added, non-special token: an atomic unit, so a word start
    tables = token_tables(t)
    ws = dict(zip(t.convert_ids_to_tokens(list(range(len(t)))), tables.word_start))
    se = dict(zip(t.convert_ids_to_tokens(list(range(len(t)))), tables.sentence_end))
    assert ws["▁ab"] and ws["▁"] and not ws["ab"] and not ws["."]
    assert ws["<0x0A>"] and ws["<0x20>"]  # whitespace bytes begin a word
    assert not ws["<0xE5>"] and not ws["<0xAD>"]  # bytes of a character continue one
    assert ws["<sep>"] and not tables.special[len(t) - 1]
    assert se["."] and se['."'] and se["<0x2E>"] and not se["ab"] and not se["<0xE5>"]


def test_token_tables_rejects_unknown_vocabulary_style():
    vocab = {p: i for i, p in enumerate(SPECIALS + ["ab", "cd"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    with pytest.raises(ValueError, match="word boundaries"):
        token_tables(wrap(tok))


def test_token_tables_are_read_only(env):
    with pytest.raises(ValueError):
        env.tables.word_start[0] = False


# ------------------------------------------------------------------------------------- determinism
def test_noise_is_a_pure_function_of_seed_epoch_doc_segment(env):
    a, b = env.denoiser(seed=3), env.denoiser(seed=3)
    segments = [x for x in env.segments if len(x[2]) > 40][:40]  # long enough that noise rarely coincides
    np.random.seed(1)  # global RNG state must not matter
    first = [a.noise(seg, epoch=2, doc_id=d, segment_index=s) for d, s, seg in segments]
    np.random.seed(2)
    again = [b.noise(seg, epoch=np.int64(2), doc_id=d, segment_index=torch.tensor(s)) for d, s, seg in segments]
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert all(x.dtype == np.int64 for x in first)

    changed = {
        "seed": [env.denoiser(seed=4).noise(seg, epoch=2, doc_id=d, segment_index=s) for d, s, seg in segments],
        "epoch": [a.noise(seg, epoch=3, doc_id=d, segment_index=s) for d, s, seg in segments],
        "doc_id": [a.noise(seg, epoch=2, doc_id=d + "x", segment_index=s) for d, s, seg in segments],
        "segment_index": [a.noise(seg, epoch=2, doc_id=d, segment_index=s + 1) for d, s, seg in segments],
    }
    for key, outputs in changed.items():
        assert all(not np.array_equal(x, y) for x, y in zip(first, outputs)), key


def test_noise_does_not_depend_on_the_process(tmp_path):
    """Same noise in a fresh interpreter with another hash seed (no Python hash(), no global state)."""
    rng = np.random.default_rng(0)
    size = 300
    word_start, sentence_end = rng.random(size) < 0.6, rng.random(size) < 0.05
    tokens = np.concatenate(([0], rng.integers(5, size, 400), [2]))
    np.savez(tmp_path / "case.npz", word_start=word_start, sentence_end=sentence_end, tokens=tokens)
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from memformers.noising import BartDenoiser, DenoisingConfig, TokenTables
        case = np.load({str(tmp_path / "case.npz")!r})
        tables = TokenTables(word_start=case["word_start"], sentence_end=case["sentence_end"])
        d = BartDenoiser(DenoisingConfig(insert_ratio=0.05, rotate_ratio=0.5), tables, mask_id=4, bos_id=0,
                         eos_id=2, pad_id=1, vocab_size={size}, seed=11)
        out = d.noise(case["tokens"], epoch=1, doc_id="a/b", segment_index=5)
        sys.stdout.write(",".join(map(str, out.tolist())))
    """)
    tables = TokenTables(word_start=word_start, sentence_end=sentence_end)
    local = BartDenoiser(
        DenoisingConfig(insert_ratio=0.05, rotate_ratio=0.5),
        tables,
        mask_id=4,
        bos_id=0,
        eos_id=2,
        pad_id=1,
        vocab_size=size,
        seed=11,
    ).noise(tokens, epoch=1, doc_id="a/b", segment_index=5)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": path},
        ).stdout
        assert out == ",".join(map(str, local.tolist()))


def test_input_is_not_modified(env):
    d = env.denoiser(replace_length=-1, insert_ratio=0.1, rotate_ratio=1.0)
    for doc, s, seg in env.segments[:10]:
        before = seg.copy()
        d.noise(seg, epoch=0, doc_id=doc, segment_index=s)
        assert np.array_equal(seg, before)


# ------------------------------------------------------------------------------------- permutation
def test_no_noise_gives_the_clean_segment(env):
    pairs = env.run(env.denoiser(mask_ratio=0.0, permute_sentence_ratio=0.0))
    assert all(np.array_equal(t, s) for t, s in pairs)


def sentence_order(body: tuple, sentences: list[tuple], used: tuple = ()) -> list[int] | None:
    """The order in which `body` concatenates the given sentences (each used once), or None."""
    if len(used) == len(sentences):
        return [] if not body else None
    for i, s in enumerate(sentences):
        if i not in used and body[: len(s)] == s:
            rest = sentence_order(body[len(s) :], sentences, used + (i,))
            if rest is not None:
                return [i] + rest
    return None


def test_permutation_moves_whole_sentences_only(env):
    pairs = env.run(env.denoiser(mask_ratio=0.0, permute_sentence_ratio=1.0))
    bos, eos = env.ids["bos_id"], env.ids["eos_id"]
    moved = multi = 0
    for target, source in pairs:
        assert source[0] == bos and source[-1] == eos and len(source) == len(target)
        assert sorted(source.tolist()) == sorted(target.tolist())
        sentences = env.sentences(target)
        assert sentence_order(tuple(source[1:-1]), sentences) is not None
        multi += len(set(sentences)) > 1
        moved += not np.array_equal(source, target)
    assert multi > 50 and moved >= 0.8 * multi


def test_permutation_keeps_decimals_together(env):
    """ "3.5" contains a sentence-end token ("."), but no word starts after it: it is not a boundary."""
    t = env.tokenizer
    decimal_ids = {tuple(t(f" {a}.{b}", add_special_tokens=False)["input_ids"]) for a in range(1, 99) for b in range(9)}
    # The decimal as it appears after a space; it must still be there, contiguous, after permutation.

    def count(seq):
        seq = seq.tolist()
        return sum(
            tuple(seq[i : i + len(d)]) == d for d in decimal_ids for i in range(len(seq) - len(d) + 1) if seq[i] == d[0]
        )

    pairs = env.run(env.denoiser(mask_ratio=0.0, permute_sentence_ratio=1.0))[:60]
    total = 0
    for target, source in pairs:
        assert count(source) == count(target)
        total += count(target)
    assert total > 20


def test_partial_permutation_ratio(env):
    """fairseq: ceil(p * n) random sentences are shuffled among their own places; the rest stay."""
    pairs = env.run(env.denoiser(mask_ratio=0.0, permute_sentence_ratio=0.3))
    in_place = expected = total = 0
    for target, source in pairs:
        sentences = env.sentences(target)
        order = sentence_order(tuple(source[1:-1]), sentences)
        assert order is not None
        in_place += sum(i == j for i, j in enumerate(order))
        # A random permutation of m sentences has one fixed point on average.
        expected += len(sentences) - math.ceil(0.3 * len(sentences)) + 1
        total += len(sentences)
    assert total > 1000 and abs(in_place - expected) < 0.04 * total


# ------------------------------------------------------------------------------------------ masking
def test_span_masking_statistics(env):
    """replace_length=-1 keeps positions, so the masked words can be read off against the target."""
    mask = env.ids["mask_id"]
    pairs = env.run(env.denoiser(replace_length=-1, random_ratio=0.0, permute_sentence_ratio=0.0))
    pairs_aligned = aligned(pairs)
    assert len(pairs_aligned) > 0.5 * len(pairs)
    masked_words = words = 0
    for target, source in pairs_aligned:
        ws = env.word_starts(target)
        masked = source == mask
        assert not masked[0] and not masked[-1] and source[0] == target[0] and source[-1] == target[-1]
        assert np.array_equal(source[~masked], target[~masked])
        for start, end in runs(masked):  # whole words only: a run starts and ends on word boundaries
            assert ws[start] and (ws[end] or end == len(target) - 1)
        masked_words += int((masked & ws).sum())
        words += int(ws.sum())
    # Budget ceil(0.3 * words); overlapping spans and spans cut at </s> mask a little less.
    assert 0.25 < masked_words / words < 0.31


@pytest.mark.parametrize("lam", [3.5, 1.5])
def test_span_length_distribution(env, lam):
    """fairseq's sampler: Poisson(lambda) draws (pmf truncated below 1e-7) until the budget is covered,
    the last one trimmed."""
    d = env.denoiser(poisson_lambda=lam)
    rng = np.random.default_rng(0)
    drawn = []
    for budget in range(1, 60):
        lengths = d.span_lengths(rng, budget)
        assert lengths.sum() == budget and (lengths >= 0).all() and lengths[-1] > 0
    for _ in range(40):
        # With a large budget the stopping rule barely biases the draws before the trimmed last one.
        drawn += d.span_lengths(rng, 1000)[:-1].tolist()
    drawn = np.array(drawn)
    assert len(drawn) > 10_000
    assert abs(drawn.mean() - lam) < 0.06
    assert abs(np.mean(drawn == 0) - math.exp(-lam)) < 0.01
    for k in (1, 2, 3):
        assert abs(np.mean(drawn == k) - math.exp(-lam) * lam**k / math.factorial(k)) < 0.015
    if lam == 3.5:
        assert drawn.max() <= 17  # pmf(18) < 1e-7: beyond fairseq's support


def test_masked_runs_have_poisson_lengths(env):
    """End to end: with a low mask ratio on whole documents spans rarely touch, so a masked run is about
    one span (budget trims shorten a few, touching spans merge a few)."""
    mask = env.ids["mask_id"]
    means = {}
    for mask_length in ("span-poisson", "word"):
        found = []
        d = env.denoiser(
            mask_ratio=0.05, replace_length=-1, random_ratio=0.0, permute_sentence_ratio=0.0, mask_length=mask_length
        )
        for i, doc in enumerate(env.docs):
            target = np.array(
                [env.ids["bos_id"], *env.tokenizer(doc, add_special_tokens=False)["input_ids"], env.ids["eos_id"]]
            )
            source = d.noise(target, epoch=0, doc_id=str(i), segment_index=0)
            if len(source) == len(target):
                ws = env.word_starts(target)
                found += [int(ws[a:b].sum()) for a, b in runs(source == mask)]
        assert len(found) > 100
        means[mask_length] = np.mean(found)
    assert 2.8 < means["span-poisson"] < 4.0 and means["word"] < 1.3, means


def test_zero_length_spans_insert_masks(env):
    """fairseq: a span of length 0 inserts a <mask> (with -1 the length then grows by one per insert)."""
    pairs = env.run(env.denoiser(replace_length=-1, random_ratio=0.0, permute_sentence_ratio=0.0), epochs=4)
    inserted = sum(len(s) - len(t) for t, s in pairs)
    # Draws stop once they cover the budget B. Nonzero draws form a renewal process, so about
    # B / E[L|L>0] + E[L^2|L>0] / (2 E[L|L>0]^2) of them are made, each preceded by p0 / (1 - p0) zeros.
    p0 = math.exp(-3.5)
    mean, square = 3.5 / (1 - p0), (3.5 + 3.5**2) / (1 - p0)
    expected = sum(
        (math.ceil(0.3 * env.word_starts(t).sum()) / mean + square / (2 * mean**2)) * p0 / (1 - p0) for t, _ in pairs
    )
    assert 0.75 * expected < inserted < 1.25 * expected
    for target, source in pairs:
        assert len(source) >= len(target) and source[0] == target[0] and source[-1] == target[-1]


def test_random_replacements(env):
    mask = env.ids["mask_id"]
    pairs = aligned(env.run(env.denoiser(replace_length=-1, random_ratio=0.1, permute_sentence_ratio=0.0), epochs=4))
    changed = random = 0
    for target, source in pairs:
        touched = source != target
        changed += int(touched.sum())
        random += int((touched & (source != mask)).sum())
        assert not env.tables.special[source[1:-1]][source[1:-1] != mask].any()  # never a special token
    assert 0.07 < random / changed < 0.13

    defaults = env.run(env.denoiser())  # fairseq's recipe: replace_length=1, random_ratio=0.1
    for _, source in defaults:
        assert not env.tables.special[source[1:-1]][source[1:-1] != mask].any()


def test_replace_length_semantics(env):
    mask = env.ids["mask_id"]
    common = dict(random_ratio=0.0, permute_sentence_ratio=0.0)
    keep, one, drop = (env.run(env.denoiser(replace_length=r, **common)) for r in (-1, 1, 0))
    masks_per_word = []
    for (target, kept), (_, single), (_, dropped) in zip(keep, one, drop):
        if len(kept) != len(target):
            continue  # a zero-length span inserted a mask somewhere
        masked = kept == mask
        assert np.array_equal(dropped, kept[~masked])  # 0: the spans are deleted
        # 1: each masked run becomes between one <mask> and one per word (touching spans stay apart).
        ws, pos = env.word_starts(target), 0
        prev = 0
        for a, b in runs(masked):
            assert np.array_equal(single[pos : pos + a - prev], target[prev:a])
            pos += a - prev
            k = 0
            while pos + k < len(single) and single[pos + k] == mask:
                k += 1
            assert 1 <= k <= ws[a:b].sum()
            masks_per_word.append((k, int(ws[a:b].sum())))
            pos, prev = pos + k, b
        assert np.array_equal(single[pos:], target[prev:])
    masks, words = np.array(masks_per_word).sum(0)
    assert 0.2 < masks / words < 0.35  # ~one mask per Poisson(3.5) span


RANDOM = -1  # the reference's marker for "a random token goes here"


def fairseq_reference(d: BartDenoiser, tables: TokenTables, tokens: np.ndarray, **key) -> np.ndarray | None:
    """A literal, loop-by-loop port of fairseq's permute_sentences + add_whole_word_mask (with this module's
    sentence and word-start rules), fed the same draws as BartDenoiser. Random replacements are marked
    RANDOM. None when a zero-length span would insert (not modelled here)."""
    cfg, rng = d.cfg, d.rng(**key)
    source, n = tokens.copy(), len(tokens)
    is_word_start = tables.word_start[source].astype(np.int64)
    is_word_start[1] = 1
    is_word_start[0] = is_word_start[-1] = 0
    if cfg.permute_sentence_ratio > 0:
        sentence_ends = [i + 1 for i in range(1, n - 2) if tables.sentence_end[source[i]] and is_word_start[i + 1]]
        sentence_ends.append(n - 1)
        num_sentences = len(sentence_ends)
        if num_sentences > 1:
            num_to_permute = math.ceil((num_sentences * 2 * cfg.permute_sentence_ratio) / 2.0)
            substitutions = rng.permutation(num_sentences)[:num_to_permute]
            ordering = np.arange(0, num_sentences)
            ordering[substitutions] = substitutions[rng.permutation(num_to_permute)]
            result, flags, index = source.copy(), is_word_start.copy(), 1
            for i in ordering:
                lo, hi = (sentence_ends[i - 1] if i > 0 else 1), sentence_ends[i]
                result[index : index + hi - lo] = source[lo:hi]
                flags[index : index + hi - lo] = is_word_start[lo:hi]  # word starts travel with their tokens
                index += hi - lo
            source, is_word_start = result, flags
    if cfg.mask_length == "subword":
        is_word_start = np.ones(n, dtype=np.int64)
        is_word_start[0] = is_word_start[-1] = 0
    num_to_mask = int(math.ceil(is_word_start.sum() * cfg.mask_ratio))
    if num_to_mask == 0:
        return source
    if cfg.mask_length == "span-poisson":
        lengths = d.span_lengths(rng, num_to_mask)
        if (lengths == 0).any():
            return None
    else:
        lengths = np.ones(num_to_mask, dtype=np.int64)  # fairseq's "word" loop is this loop with lengths 1
    word_starts = np.flatnonzero(is_word_start)
    indices = word_starts[rng.choice(len(word_starts), size=len(lengths), replace=False)]
    mask_random = rng.random(len(lengths)) < cfg.random_ratio
    to_keep = np.ones(n, dtype=bool)
    is_word_start[-1] = 255  # acts as a long length, so spans don't go over the end of doc
    if cfg.replace_length == 0:
        to_keep[indices] = False
    else:
        source[indices] = d.mask_id
        source[indices[mask_random]] = RANDOM
    lengths = lengths - 1
    while len(indices) > 0:
        lengths = lengths - is_word_start[indices + 1]
        uncompleted = lengths >= 0
        indices, mask_random, lengths = indices[uncompleted] + 1, mask_random[uncompleted], lengths[uncompleted]
        if cfg.replace_length != -1:
            to_keep[indices] = False
        else:
            source[indices] = d.mask_id
            source[indices[mask_random]] = RANDOM
    return source[to_keep]


@pytest.mark.parametrize(
    "mask_length,replace_length",
    [("span-poisson", 1), ("span-poisson", -1), ("span-poisson", 0), ("word", -1), ("subword", 1)],
)
def test_matches_literal_fairseq_port(env, mask_length, replace_length):
    d = env.denoiser(mask_length=mask_length, replace_length=replace_length, random_ratio=0.3)
    compared = 0
    for epoch in range(2):
        for doc, s, seg in env.segments:
            key = dict(epoch=epoch, doc_id=doc, segment_index=s)
            expected, got = fairseq_reference(d, env.tables, seg, **key), d.noise(seg, **key)
            if expected is None:
                continue
            assert len(got) == len(expected)
            random = expected == RANDOM
            assert np.array_equal(got[~random], expected[~random])
            assert not env.tables.special[got[random]].any()
            compared += 1
    assert compared > 200


def test_word_masking_gives_one_mask_per_word(env):
    mask = env.ids["mask_id"]
    common = dict(mask_length="word", random_ratio=0.0, permute_sentence_ratio=0.0)
    keep, one = env.run(env.denoiser(replace_length=-1, **common)), env.run(env.denoiser(replace_length=1, **common))
    for (target, kept), (_, single) in zip(keep, one):
        ws = env.word_starts(target)
        masked = kept == mask
        assert int((masked & ws).sum()) == math.ceil(0.3 * ws.sum())  # no overlaps: the budget exactly
        for a, b in runs(masked):
            assert ws[a] and (ws[b] or b == len(target) - 1)
        collapse = ~masked | ws  # each masked word keeps its first position only
        assert np.array_equal(single, kept[collapse])


def test_subword_masking_masks_single_tokens(env):
    mask = env.ids["mask_id"]
    for target, source in env.run(env.denoiser(mask_length="subword", random_ratio=0.0, permute_sentence_ratio=0.0)):
        assert len(source) == len(target)
        assert int((source == mask).sum()) == math.ceil(0.3 * (len(target) - 2))


@pytest.mark.parametrize(
    "mask_length,replace_length",
    [("span-poisson", -1), ("span-poisson", 1), ("span-poisson", 0), ("word", -1), ("subword", 0)],
)
def test_spans_never_include_bos_or_eos(env, mask_length, replace_length):
    bos, eos = env.ids["bos_id"], env.ids["eos_id"]
    d = env.denoiser(mask_ratio=1.0, mask_length=mask_length, replace_length=replace_length, random_ratio=0.5)
    for target, source in env.run(d):
        assert source[0] == bos and source[-1] == eos
        assert not np.isin(source[1:-1], [bos, eos]).any()
        if replace_length == -1:
            assert len(source) >= len(target)


# ------------------------------------------------------------------------------ insertion, rotation
def test_insertion_count(env):
    mask = env.ids["mask_id"]
    d = env.denoiser(mask_ratio=0.0, permute_sentence_ratio=0.0, insert_ratio=0.2, random_ratio=0.25)
    for target, source in env.run(d):
        count = math.ceil(0.2 * len(target))
        assert len(source) == len(target) + count
        assert int((source == mask).sum()) == count - math.ceil(0.25 * count)
        it = iter(source.tolist())  # the clean tokens are all still there, in order
        assert all(tok in it for tok in target.tolist())
        assert source[0] == target[0] and source[-1] == target[-1]


def test_rotation(env):
    d = env.denoiser(mask_ratio=0.0, permute_sentence_ratio=0.0, rotate_ratio=1.0)
    offsets = set()
    for target, source in env.run(d):
        body, rotated = target[1:-1].tolist(), source[1:-1].tolist()
        shift = next(k for k in range(len(body)) if body[k:] + body[:k] == rotated)
        offsets.add(shift)
        assert source[0] == target[0] and source[-1] == target[-1]
    assert len(offsets) > 20

    none = env.denoiser(mask_ratio=0.0, permute_sentence_ratio=0.0, rotate_ratio=0.0)
    assert all(np.array_equal(t, s) for t, s in env.run(none))


# ------------------------------------------------------------------------------------------ collate
def test_collate(env):
    d = env.denoiser()
    pad, bos, eos = env.ids["pad_id"], env.ids["bos_id"], env.ids["eos_id"]
    doc, s, seg = env.segments[5]
    short = (doc, s, np.append(seg[:40], eos))  # shorter than the others: padded
    chosen = [env.segments[0], env.segments[1], None, short]  # lane 2 is a padding lane
    width = max(len(c[2]) for c in chosen if c is not None)
    input_ids = torch.full((4, width), pad, dtype=torch.long)
    attention = torch.zeros((4, width), dtype=torch.bool)
    for lane, c in enumerate(chosen):
        seg = c[2] if c is not None else np.array([bos, eos])
        input_ids[lane, : len(seg)] = torch.from_numpy(seg)
        attention[lane, : len(seg)] = True
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "valid": torch.tensor([True, True, False, True]),
        "resets": torch.tensor([True, False, False, False]),
        "doc_ids": [c[0] if c else "" for c in chosen],
        "epoch": torch.full((4,), 3),
        "segment_index": torch.tensor([c[1] if c else -1 for c in chosen]),
    }
    out = d.collate(batch)
    assert set(batch) <= set(out) and out["input_ids"] is input_ids
    assert "source_ids" not in batch  # the loader's dict is left alone

    src, smask, labels = out["source_ids"], out["source_mask"], out["labels"]
    assert src.dtype == torch.long and smask.dtype == torch.bool and labels.dtype == torch.long
    assert labels.shape == input_ids.shape and src.shape == smask.shape and src.shape[0] == 4
    lengths = smask.sum(1)
    assert src.shape[1] == int(lengths.max())
    assert (src[~smask] == pad).all() and (labels[~attention] == -100).all()
    assert (labels[2] == -100).all()
    assert src[2, :2].tolist() == [bos, eos] and int(lengths[2]) == 2
    for lane in (0, 1, 3):
        doc, seg_index, seg = chosen[lane]
        assert torch.equal(labels[lane, : len(seg)], torch.from_numpy(seg))
        expected = d.noise(seg, epoch=3, doc_id=doc, segment_index=seg_index)
        assert src[lane, : int(lengths[lane])].tolist() == expected.tolist()
        assert not np.array_equal(expected, seg)  # it was noised
    assert d(batch)["source_ids"].tolist() == src.tolist()  # usable as the loader's transform


# --------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "field,value",
    [
        ("mask_ratio", 1.5),
        ("mask_ratio", -0.1),
        ("random_ratio", 2),
        ("insert_ratio", -1.0),
        ("rotate_ratio", "0.5"),
        ("permute_sentence_ratio", 1.01),
        ("replace_length", 2),
        ("replace_length", True),
        ("mask_length", "span"),
        ("poisson_lambda", 0.0),
        ("poisson_lambda", 100.0),
    ],
)
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        DenoisingConfig(**{field: value})


def test_config_validation_subword_needs_replace_length_0_or_1():
    with pytest.raises(ValueError, match="replace_length"):
        DenoisingConfig(mask_length="subword", replace_length=-1)
    DenoisingConfig(mask_length="subword", replace_length=0)


def test_denoiser_validation(env):
    cfg = DenoisingConfig()
    cfg.mask_ratio = 3.0  # mutated after construction: re-checked by the denoiser
    with pytest.raises(ValueError, match="mask_ratio"):
        BartDenoiser(cfg, env.tables, vocab_size=len(env.tokenizer), seed=0, **env.ids)
    with pytest.raises(ValueError, match="vocab_size"):
        BartDenoiser(DenoisingConfig(), env.tables, vocab_size=10, seed=0, **env.ids)
    with pytest.raises(ValueError, match="mask_id"):
        BartDenoiser(
            DenoisingConfig(), env.tables, vocab_size=len(env.tokenizer), seed=0, **{**env.ids, "mask_id": 10**6}
        )
    d = env.denoiser()
    with pytest.raises(ValueError, match="<s>"):
        d.noise(np.array([5, 6, env.ids["eos_id"]]), epoch=0, doc_id="x", segment_index=0)
    with pytest.raises(ValueError, match="outside"):
        d.noise(np.array([env.ids["bos_id"], 10**6, env.ids["eos_id"]]), epoch=0, doc_id="x", segment_index=0)
    # A larger (padded) embedding is fine: random tokens still come from the real vocabulary.
    wide = BartDenoiser(
        DenoisingConfig(random_ratio=1.0), env.tables, vocab_size=len(env.tokenizer) + 64, seed=0, **env.ids
    )
    for _, source in env.run(wide)[:20]:
        assert source.max() < len(env.tokenizer)


def test_tiny_segments(env):
    bos, eos = env.ids["bos_id"], env.ids["eos_id"]
    d = env.denoiser(insert_ratio=0.5, rotate_ratio=1.0)
    assert d.noise(np.array([bos, eos]), epoch=0, doc_id="x", segment_index=0)[[0, -1]].tolist() == [bos, eos]
    one = d.noise(np.array([bos, 9, eos]), epoch=0, doc_id="x", segment_index=0)
    assert one[0] == bos and one[-1] == eos
