"""BART's denoising objective (fairseq's recipe), as a deterministic, numpy-only library module.

The recipe
----------
This ports ``fairseq/data/denoising_dataset.py`` (``DenoisingDataset``) with fairseq's BART pretraining
defaults (``--mask 0.3 --mask-random 0.1 --mask-length span-poisson --poisson-lambda 3.5
--replace-length 1 --permute-sentences 1 --rotate 0 --insert 0``). A clean segment ``<s> … </s>``
becomes the encoder source through, in this order:

1. **Sentence permutation** (``permute_sentence_ratio``): the sentences between ``<s>`` and ``</s>``
   are shuffled; ``ceil(ratio * #sentences)`` of them take part. A trailing partial sentence counts as a
   sentence. ``<s>``/``</s>`` never move.
2. **Whole-word span masking** (``mask_ratio``): a budget of ``ceil(mask_ratio * #words)`` words is split
   into spans with lengths ~ Poisson(``poisson_lambda``) (truncated where the pmf drops below 1e-7, as in
   fairseq; the last span is trimmed to the budget). Spans start at distinct random word starts and run
   over whole words; they may overlap each other but stop before ``</s>``. A zero-length span inserts a
   ``<mask>`` instead (step 3's machinery). ``replace_length``: 1 = each span becomes one token (``<mask>``,
   or with probability ``random_ratio`` a random token), 0 = spans are deleted, -1 = every token of a span
   is replaced (keeps the length). ``mask_length="word"`` uses spans of one word, ``"subword"`` spans of
   one token with every token counting as a word.
3. **Insertion** (``insert_ratio``): ``ceil(ratio * len)`` tokens are inserted at random interior
   positions; ``ceil(count * random_ratio)`` of them are random tokens, the rest ``<mask>``.
4. **Rotation** (``rotate_ratio``): with that probability the interior is rotated by a random offset.

The target is the whole clean segment ``<s> … </s>`` (see :meth:`BartDenoiser.collate`).

Determinism
-----------
The noise for a segment is a pure function of ``(seed, epoch, doc_id, segment_index)``: every draw comes
from a private ``numpy.random.Generator`` seeded by ``blake2b(f"{seed}/{epoch}/{doc_id}/{segment_index}")``
(the key is unambiguous: only ``doc_id`` can contain ``/`` and it sits between integer fields). Neither
Python's ``hash()`` (salted per process) nor any global RNG state is used, and a denoiser holds no mutable
state, so a resumed run, another process or another thread draws exactly the same noise. Draws are made in
the order of the steps above (the sentence order first, then span lengths, span starts, which spans are
random, the random tokens, insertions, rotation): the sentence order does not depend on the masking
settings, and which spans are drawn does not depend on ``replace_length``.

Deviations from fairseq (deliberate)
------------------------------------
* Sentence ends: fairseq uses one "full stop" id (``</s>``, or GPT-2's ``.``) and ends a sentence after
  the first full stop of a run. Here a sentence ends after a token whose text ends with ``.``/``!``/``?``
  (optionally followed by closing quotes/brackets, ``TokenTables.sentence_end``) *and whose next token
  starts a word* (or is ``</s>``). The extra condition keeps ``3.5``, ``e.g.x`` or ``www.x.org`` intact
  and makes ``...``/``?!`` end the sentence after the whole run; it also means every sentence is a
  sequence of whole words.
* The first token after ``<s>`` always starts a word (fairseq never masks it with a byte-level BPE, whose
  document-initial word has no ``Ġ``; here a segment may also begin mid-word, and that partial word is
  the segment's first word). Word-start flags are computed on the clean segment and travel with their
  tokens through the sentence permutation.
* Random replacement tokens are drawn uniformly from the real vocabulary *without* special tokens
  (fairseq draws from ``[1, len(dict))``, which includes ``<pad>``, ``</s>``, ``<unk>``, ``<mask>``):
  a random ``</s>`` or ``<pad>`` in the source would be a corrupt input, not noise.
  Ids at or past ``len(tables)`` (an embedding padded beyond the tokenizer) are never drawn either.
* The zero-length-span insertions get their count directly (fairseq passes ``count / len`` and takes
  ``ceil(len * p)`` again, which float rounding can turn into ``count + 1``).
* The draws come from numpy (fairseq mixes torch and numpy global RNGs), so the noise is fairseq's in
  distribution, not bit for bit. fairseq's step-by-step span extension is vectorised; with overlapping
  spans the result is the same (for ``replace_length=-1`` a position takes the value of the
  earliest-starting span covering it, as fairseq's overwriting order gives).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np

from memformers.data.tokenizer import ends_sentence

__all__ = ["DenoisingConfig", "TokenTables", "token_tables", "BartDenoiser"]

MASK_LENGTHS = ("subword", "word", "span-poisson")
LABEL_IGNORE = -100


# --------------------------------------------------------------------------------------------- config
@dataclass
class DenoisingConfig:
    """Rates of the BART noising functions; defaults are fairseq's BART pretraining recipe."""

    mask_ratio: float = 0.3  # fraction of words masked (--mask)
    random_ratio: float = 0.1  # fraction of mask spans / insertions that are a random token (--mask-random)
    insert_ratio: float = 0.0  # tokens inserted, as a fraction of the length (--insert)
    rotate_ratio: float = 0.0  # probability of rotating the segment (--rotate)
    permute_sentence_ratio: float = 1.0  # fraction of sentences shuffled (--permute-sentences)
    replace_length: int = 1  # -1 keep span length, 0 delete span, 1 one token per span (--replace-length)
    mask_length: str = "span-poisson"  # "span-poisson" | "word" | "subword" (--mask-length)
    poisson_lambda: float = 3.5  # mean span length in words for span-poisson (--poisson-lambda)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        for name in ("mask_ratio", "random_ratio", "insert_ratio", "rotate_ratio", "permute_sentence_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"DenoisingConfig.{name} must be a number in [0, 1], got {value!r}")
        if isinstance(self.replace_length, bool) or self.replace_length not in (-1, 0, 1):
            raise ValueError(f"DenoisingConfig.replace_length must be -1, 0 or 1, got {self.replace_length!r}")
        if self.mask_length not in MASK_LENGTHS:
            raise ValueError(f"DenoisingConfig.mask_length must be one of {MASK_LENGTHS}, got {self.mask_length!r}")
        if self.mask_length == "subword" and self.replace_length == -1:
            # fairseq's rule: length-preserving masking of single subwords would just be token masking.
            raise ValueError("DenoisingConfig.replace_length must be 0 or 1 when mask_length='subword'")
        lam = self.poisson_lambda
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 < lam <= 64.0:
            # lambda <= 0 would only draw empty spans (fairseq loops forever); the support is cut at 127.
            raise ValueError(f"DenoisingConfig.poisson_lambda must be in (0, 64], got {lam!r}")


# ------------------------------------------------------------------------------------- token tables
@dataclass(frozen=True, eq=False)
class TokenTables:
    """Per-vocabulary-id flags, indexed by token id (length V = len(tokenizer)).

    ``special`` (optional, an addition to the contract) marks special tokens so that random
    replacements never draw them; ``token_tables`` always fills it.
    """

    word_start: np.ndarray
    sentence_end: np.ndarray
    special: np.ndarray | None = None

    def __post_init__(self) -> None:
        fields = ["word_start", "sentence_end"] + (["special"] if self.special is not None else [])
        for name in fields:
            arr = np.array(getattr(self, name), dtype=bool)  # a private, read-only copy: safe across threads
            if arr.ndim != 1:
                raise ValueError(f"TokenTables.{name} must be 1-D, got shape {arr.shape}")
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        sizes = {name: len(getattr(self, name)) for name in fields}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"TokenTables arrays must have the same length, got {sizes}")

    def __len__(self) -> int:
        return len(self.word_start)


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>\Z")
_METASPACE = "\u2581"  # "▁"


def _gpt2_byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in character -> the byte it encodes."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_DECODER = _gpt2_byte_decoder()
_BYTE_LEVEL_SPACE = "\u0120"  # "Ġ", GPT-2's stand-in for the space byte


def _vocab_style(pieces: list[str]) -> str:
    """Word-boundary convention of a vocabulary, from its most frequent marker."""
    counts = {
        "metaspace": sum(p.startswith(_METASPACE) for p in pieces),  # SentencePiece: "▁word"
        "byte-level": sum(p.startswith(_BYTE_LEVEL_SPACE) for p in pieces),  # GPT-2/BART: "Ġword"
        "wordpiece": sum(p.startswith("##") for p in pieces),  # BERT: "word", "##piece"
    }
    style, count = max(counts.items(), key=lambda kv: kv[1])
    if count == 0:
        raise ValueError(
            "token_tables: cannot tell word boundaries from the vocabulary "
            "(no SentencePiece '▁', byte-level 'Ġ' or WordPiece '##' tokens)"
        )
    return style


def _piece_text(piece: str, style: str) -> str:
    """The text a vocabulary piece stands for, with the word-boundary marker as a real space."""
    fallback = _BYTE_FALLBACK.match(piece)
    if fallback:  # SentencePiece byte fallback <0xHH>: one raw byte, possibly a partial character
        return bytes([int(fallback.group(1), 16)]).decode("utf-8", errors="replace")
    if style == "metaspace":
        return piece.replace(_METASPACE, " ")
    if style == "byte-level":
        if all(c in _BYTE_DECODER for c in piece):
            return bytes(_BYTE_DECODER[c] for c in piece).decode("utf-8", errors="replace")
        return piece  # an added (non byte-encoded) token
    return piece[2:] if piece.startswith("##") else " " + piece  # wordpiece: no "##" = new word


def token_tables(tokenizer) -> TokenTables:
    """Word-start and sentence-end flags for every id of a Hugging Face tokenizer (V = len(tokenizer)).

    Word starts: a token whose text begins with whitespace — SentencePiece ``▁…``, byte-level BPE
    ``Ġ…`` (and GPT-2's newline/tab stand-ins ``Ċ``/``ĉ``, so a line break begins the next word),
    WordPiece tokens without ``##``. Special and other added tokens are word starts (fairseq's rule).
    Byte-fallback tokens ``<0xHH>`` are word starts only for a whitespace byte: the other bytes are
    pieces of a character whose word began with an earlier ``▁`` token.
    Sentence ends: tokens whose text ends a sentence by the package's one rule
    (:func:`memformers.data.tokenizer.ends_sentence`: ``.``, ``!`` or ``?``, then optional closing
    quotes/brackets), the rule the sharder cuts segments by. Special tokens never end a sentence.
    """
    size = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    special = np.zeros(size, dtype=bool)
    for i in tokenizer.all_special_ids:
        if 0 <= i < size:
            special[i] = True
    added = dict(getattr(tokenizer, "added_tokens_decoder", None) or {})
    for i, tok in added.items():
        if 0 <= i < size and getattr(tok, "special", False):
            special[i] = True

    style = _vocab_style([p for i, p in enumerate(pieces) if p is not None and not special[i] and i not in added])
    word_start = np.zeros(size, dtype=bool)
    sentence_end = np.zeros(size, dtype=bool)
    for i, piece in enumerate(pieces):
        if piece is None:  # an id the tokenizer does not know: never drawn, never split
            word_start[i] = special[i] = True
            continue
        if special[i]:
            word_start[i] = True
            continue
        text = added[i].content if i in added else _piece_text(piece, style)
        word_start[i] = i in added or text[:1].isspace()
        sentence_end[i] = ends_sentence(text)
    return TokenTables(word_start=word_start, sentence_end=sentence_end, special=special)


# ------------------------------------------------------------------------------------------ denoiser
def _poisson_cdf(lam: float) -> np.ndarray:
    """CDF of fairseq's truncated Poisson span-length distribution.

    fairseq keeps k = 0, 1, … up to and including the first pmf below 1e-7 (at most 128 values); the
    pmf is computed in log space so large lambdas do not overflow (identical values for fairseq's range).
    """
    pmf = []
    for k in range(128):
        pmf.append(math.exp(k * math.log(lam) - lam - math.lgamma(k + 1)))
        if pmf[-1] < 1e-7 and k >= lam:
            break
    cdf = np.cumsum(np.asarray(pmf) / sum(pmf))
    cdf[-1] = 1.0  # guard against float round-off: a uniform draw in [0, 1) always lands in the support
    return cdf


class BartDenoiser:
    """Applies :class:`DenoisingConfig`'s noise to segments; stateless, thread-safe, deterministic."""

    def __init__(
        self,
        cfg: DenoisingConfig,
        tables: TokenTables,
        *,
        mask_id: int,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        vocab_size: int,
        seed: int,
    ):
        cfg.validate()
        self.cfg = dataclasses.replace(cfg)  # a private copy: mutating the caller's config changes nothing
        size = len(tables.word_start)
        if vocab_size < size:
            raise ValueError(f"BartDenoiser: vocab_size={vocab_size} is smaller than the token tables ({size})")
        for name, value in (("mask_id", mask_id), ("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            if not 0 <= value < size:
                raise ValueError(f"BartDenoiser: {name}={value} is outside the vocabulary [0, {size})")
        self.mask_id, self.bos_id, self.eos_id, self.pad_id = int(mask_id), int(bos_id), int(eos_id), int(pad_id)
        self.vocab_size = int(vocab_size)
        self.seed = int(seed)
        self._word_start = tables.word_start
        self._sentence_end = tables.sentence_end
        # Random replacements: real tokens only (ids past len(tables) are embedding padding, not tokens).
        excluded = np.zeros(size, dtype=bool) if tables.special is None else tables.special.copy()
        excluded[[self.mask_id, self.bos_id, self.eos_id, self.pad_id]] = True
        self._random_pool = np.flatnonzero(~excluded).astype(np.int64)
        if len(self._random_pool) == 0 and self.cfg.random_ratio > 0:
            raise ValueError("BartDenoiser: random_ratio > 0 but the vocabulary has no non-special token")
        self._span_cdf = _poisson_cdf(self.cfg.poisson_lambda) if self.cfg.mask_length == "span-poisson" else None

    @classmethod
    def for_tokenizer(cls, cfg: DenoisingConfig, tokenizer, *, seed: int) -> BartDenoiser:
        """The denoiser of segments tokenized by `tokenizer`: its token tables and special ids."""
        from memformers.data.tokenizer import special_ids

        special = special_ids(tokenizer)
        return cls(
            cfg,
            token_tables(tokenizer),
            mask_id=special["mask"],
            bos_id=special["bos"],
            eos_id=special["eos"],
            pad_id=special["pad"],
            vocab_size=len(tokenizer),
            seed=seed,
        )

    # -- public API ----------------------------------------------------------------------------------
    def rng(self, *, epoch: int, doc_id: str, segment_index: int) -> np.random.Generator:
        """The generator every draw for this segment comes from (see the module docstring)."""
        key = f"{self.seed}/{int(epoch)}/{doc_id}/{int(segment_index)}".encode()
        digest = hashlib.blake2b(key, digest_size=16).digest()
        return np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little")))

    def noise(self, tokens: np.ndarray, *, epoch: int, doc_id: str, segment_index: int) -> np.ndarray:
        """tokens: int64 [n] = <s> ... </s> (clean). Returns the noised source int64 [m], still starting
        with <s> and ending with </s>. The input is not modified."""
        source = self._checked(tokens)  # a fresh int64 copy, ours to modify
        rng = self.rng(epoch=epoch, doc_id=doc_id, segment_index=segment_index)
        cfg = self.cfg
        word_start = self._word_starts(source)
        if cfg.permute_sentence_ratio > 0:
            source, word_start = self._permute_sentences(source, word_start, rng)
        if cfg.mask_ratio > 0:
            source = self._mask_spans(source, word_start, rng)
        if cfg.insert_ratio > 0:
            source = self._insert(source, math.ceil(len(source) * cfg.insert_ratio), rng)
        if cfg.rotate_ratio > 0 and rng.random() < cfg.rotate_ratio:
            source = self._rotate(source, rng)
        return source

    def collate(self, batch: dict) -> dict:
        """Adds ``source_ids`` [lanes, S'] (noised, pad_id-padded to the longest), ``source_mask`` (bool)
        and ``labels`` [lanes, S] (clean input_ids, -100 on padding and on invalid lanes) to a loader
        batch. Invalid lanes get the clean ``<s></s>`` as source. Returns a new dict."""
        import torch  # only here: noising itself is numpy-only

        input_ids = batch["input_ids"]
        attention = batch["attention_mask"].bool()
        valid = batch["valid"].bool().tolist()
        ids_np, attention_np = input_ids.cpu().numpy(), attention.cpu().numpy()
        segment_index = batch["segment_index"].tolist()
        epochs = batch["epoch"].tolist()  # per lane: a mixture's corpora run through their own epochs
        empty = np.array([self.bos_id, self.eos_id], dtype=np.int64)
        sources = [
            self.noise(
                ids_np[lane][attention_np[lane]],
                epoch=epochs[lane],
                doc_id=batch["doc_ids"][lane],
                segment_index=segment_index[lane],
            )
            if valid[lane]
            else empty
            for lane in range(len(valid))
        ]
        width = max((len(s) for s in sources), default=0)
        source_ids = np.full((len(sources), width), self.pad_id, dtype=np.int64)
        source_mask = np.zeros((len(sources), width), dtype=bool)
        for lane, source in enumerate(sources):
            source_ids[lane, : len(source)] = source
            source_mask[lane, : len(source)] = True
        labels = input_ids.clone().long().masked_fill(~attention, LABEL_IGNORE)
        labels[~torch.as_tensor(valid, dtype=torch.bool)] = LABEL_IGNORE
        out = dict(batch)
        out.update(source_ids=torch.from_numpy(source_ids), source_mask=torch.from_numpy(source_mask), labels=labels)
        return out

    __call__ = collate  # so the denoiser can be passed as the loader's `transform`

    # -- helpers -------------------------------------------------------------------------------------
    def _checked(self, tokens) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or len(tokens) < 2 or tokens[0] != self.bos_id or tokens[-1] != self.eos_id:
            raise ValueError("BartDenoiser.noise: tokens must be a 1-D segment <s> ... </s>")
        if tokens.min() < 0 or tokens.max() >= len(self._word_start):
            raise ValueError("BartDenoiser.noise: token id outside the token tables")
        return tokens.astype(np.int64)  # always a copy

    def _word_starts(self, tokens: np.ndarray) -> np.ndarray:
        """Per-position word-start flags of a clean segment; <s> and </s> are never part of a word."""
        word_start = self._word_start[tokens]  # fancy indexing: a fresh, writable array
        word_start[1] = True  # the segment's first (possibly partial) word starts right after <s>
        word_start[0] = word_start[-1] = False
        return word_start

    def _random_tokens(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return self._random_pool[rng.integers(len(self._random_pool), size=count)]

    def _permute_sentences(self, tokens, word_start, rng):
        n = len(tokens)
        # A sentence ends after a sentence-end token followed by a word start; the last one at </s>.
        inner_ends = np.flatnonzero(self._sentence_end[tokens[1 : n - 2]] & word_start[2 : n - 1]) + 2
        ends = np.append(inner_ends, n - 1)
        starts = np.concatenate(([1], ends[:-1]))
        count = len(ends)
        if count < 2:
            return tokens, word_start
        # fairseq: ceil(p * count) sentences chosen at random are shuffled among their own places.
        num_to_permute = math.ceil(count * self.cfg.permute_sentence_ratio)
        chosen = rng.permutation(count)[:num_to_permute]
        ordering = np.arange(count)
        ordering[chosen] = chosen[rng.permutation(num_to_permute)]
        # Gather positions sentence by sentence without a Python loop.
        lengths, first = (ends - starts)[ordering], starts[ordering]
        offsets = np.cumsum(lengths) - lengths
        gather = np.arange(n - 2) + np.repeat(first - offsets, lengths)
        source, flags = tokens.copy(), word_start.copy()
        source[1 : n - 1] = tokens[gather]
        flags[1 : n - 1] = word_start[gather]
        return source, flags

    def span_lengths(self, rng: np.random.Generator, budget: int) -> np.ndarray:
        """fairseq's span lengths (in words) for a budget of words: truncated-Poisson draws until they
        cover the budget, the last one trimmed so they sum to it. Zeros are kept (they become insertions).
        Only for mask_length="span-poisson"; public for tests and analysis."""
        if self._span_cdf is None:
            raise ValueError("BartDenoiser.span_lengths needs mask_length='span-poisson'")
        if budget <= 0:
            return np.zeros(0, dtype=np.int64)
        lengths = np.searchsorted(self._span_cdf, rng.random(budget), side="right")
        total = np.cumsum(lengths)
        while total[-1] < budget:  # rare: mostly tiny budgets drawing zeros
            lengths = np.concatenate([lengths, np.searchsorted(self._span_cdf, rng.random(budget), side="right")])
            total = np.cumsum(lengths)
        last = int(np.searchsorted(total, budget, side="left"))  # first span reaching the budget
        lengths = lengths[: last + 1]
        lengths[last] = budget - (total[last - 1] if last > 0 else 0)
        return lengths

    def _mask_spans(self, source, word_start, rng):
        cfg, n = self.cfg, len(source)
        if cfg.mask_length == "subword":  # every token is its own "word"
            word_start = np.ones(n, dtype=bool)
            word_start[0] = word_start[-1] = False
        candidates = np.flatnonzero(word_start)
        budget = math.ceil(len(candidates) * cfg.mask_ratio)
        if budget == 0:
            return source
        num_inserts = 0
        if self._span_cdf is not None:
            lengths = self.span_lengths(rng, budget)
            num_inserts = int(np.count_nonzero(lengths == 0))  # zero-length spans become insertions
            lengths = lengths[lengths > 0]
            if len(lengths) == 0:
                return self._insert(source, num_inserts, rng)
        else:
            lengths = np.ones(budget, dtype=np.int64)
        starts = candidates[rng.choice(len(candidates), size=len(lengths), replace=False)]
        is_random = rng.random(len(lengths)) < cfg.random_ratio
        result = self._replace_spans(source, starts, self._span_ends(word_start, starts, lengths), is_random, rng)
        if num_inserts:
            result = self._insert(result, num_inserts, rng)
        return result

    @staticmethod
    def _span_ends(word_start, starts, lengths):
        """Exclusive end of each span of `lengths` words from `starts`, vectorising fairseq's extension loop.

        A span of L words runs until its (L+1)-th word start: with cum = running count of word starts, it
        ends at the first position where cum reaches cum[start] + L. </s> weighs more than any span can
        reach, so spans stop before it."""
        weight = word_start.astype(np.int64)
        weight[-1] = len(weight)
        cum = np.cumsum(weight)
        return np.searchsorted(cum, cum[starts] + lengths, side="left")

    def _replace_spans(self, source, starts, ends, is_random, rng):
        """Apply replace_length to the spans [starts, ends) (which may overlap)."""
        n, replace_length = len(source), self.cfg.replace_length
        # Positions inside a span after its first token (fairseq's "extension" tokens).
        inner = np.cumsum(np.bincount(starts + 1, minlength=n + 1)[:n] - np.bincount(ends, minlength=n + 1)[:n]) > 0
        if replace_length == 0:  # drop spans entirely
            keep = ~inner
            keep[starts] = False
            return source[keep]
        if replace_length == 1:  # one token per span: its head, extensions deleted
            source[starts] = self.mask_id
            heads = starts[is_random]
            if len(heads):
                source[heads] = self._random_tokens(rng, len(heads))
            return source[~inner]  # a head inside another span is deleted with it (fairseq)
        # -1: every covered token replaced, length kept
        covered = inner.copy()
        covered[starts] = True
        source[covered] = self.mask_id
        if is_random.any():
            # fairseq overwrites step by step, so the earliest-starting covering span wins: the first span
            # (by start) whose running-max end passes the position.
            order = np.argsort(starts)
            reach = np.maximum.accumulate(ends[order])
            positions = np.flatnonzero(covered)
            owner = order[np.searchsorted(reach, positions, side="right")]
            randomized = positions[is_random[owner]]
            source[randomized] = self._random_tokens(rng, len(randomized))
        return source

    def _insert(self, tokens, count, rng):
        """Insert `count` noise tokens at random positions strictly between <s> and </s>."""
        if count == 0:
            return tokens
        total = len(tokens) + count
        positions = rng.choice(total - 2, size=count, replace=False) + 1
        num_random = math.ceil(count * self.cfg.random_ratio)
        result = np.empty(total, dtype=np.int64)
        is_noise = np.zeros(total, dtype=bool)
        is_noise[positions] = True
        result[~is_noise] = tokens
        result[positions[num_random:]] = self.mask_id
        if num_random:
            result[positions[:num_random]] = self._random_tokens(rng, num_random)
        return result

    def _rotate(self, tokens, rng):
        """Rotate the interior by an offset in [1, n-1] (fairseq's add_rolling_noise)."""
        n = len(tokens)
        offset = int(rng.integers(1, max(1, n - 1) + 1))
        return np.concatenate((tokens[:1], tokens[offset:-1], tokens[1:offset], tokens[-1:]))
