"""Training a SentencePiece tokenizer (BPE or unigram, byte fallback) saved as a HF tokenizer directory.

SentencePiece learns the pieces and scores from the corpus (read with sources.py, fed line by line);
the result is rebuilt as a 🤗 `tokenizers` tokenizer and saved with `save_pretrained`, so
`AutoTokenizer.from_pretrained(TOK_DIR)` loads it offline. Special ids are BART's: `<s>`=0, `<pad>`=1,
`</s>`=2, `<unk>`=3, and `<mask>`=4. `tokenizer(text)` adds `<s> … </s>` as BART's does.

BPE is the default (BART's choice too): on the synthetic corpus, SentencePiece's unigram model keeps
"▁" apart from common words ("▁" + "the") and needs ~2.2 tokens per word, BPE ~1.25.

The tokenizer is lossless: no normalization (no NFKC, whitespace kept as is), byte fallback for
characters outside the vocabulary (decoded back to the same bytes, so nothing becomes `<unk>`), and
`decode(encode(text)) == text`. A `<` is always its own pre-token, so text such as "<s>" or "<0x41>"
in a document can never match the special or byte-fallback pieces.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memformers.files import publish_dir

from ..errors import DataError, TokenizerError
from ..tokenizer import load_tokenizer, special_ids
from .sources import DocumentReader, ReadStats

SPECIAL_PIECES = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>"}
MASK_PIECE = "<mask>"
MIN_VOCAB_SIZE = 300  # 256 byte-fallback pieces + 5 specials + room for characters and words
_MAX_SENTENCE_BYTES = 8192


@dataclass
class TokenizerSummary:
    """What train_tokenizer read and produced; `format()` renders it for the terminal."""

    output: str
    model_type: str
    vocab_size: int
    requested_vocab_size: int
    documents_read: int
    documents_used: int
    skipped: dict[str, int]
    sentences: int
    special_ids: dict[str, int | None]
    example: str
    example_tokens: list[str]
    seconds: float
    read: ReadStats | None = None  # the first few bad records, empty documents and invalid UTF-8, by name

    def format(self) -> str:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(self.skipped.items()) if v) or "none"
        lines = [
            f"tokenizer directory: {self.output}",
            f"  model              {self.model_type}, byte fallback",
            f"  vocabulary         {self.vocab_size:,} (asked for {self.requested_vocab_size:,})",
            f"  documents read     {self.documents_read:,}, used {self.documents_used:,}, skipped "
            f"{sum(self.skipped.values()):,} ({reasons})",
            f"  lines trained on   {self.sentences:,}",
            f"  special ids        {self.special_ids}",
            f"  example            {self.example!r} -> {self.example_tokens}",
            f"  took {self.seconds:.1f} s",
        ]
        if self.vocab_size < self.requested_vocab_size:
            lines.append("  note: the corpus supports fewer pieces than asked for; the vocabulary is smaller")
        if self.read is not None:
            lines += self.read.example_lines()
        return "\n".join(lines)


@dataclass
class _Feed:
    """The documents' non-blank lines for SentencePiece, long ones cut at spaces to fit its limit."""

    reader: DocumentReader
    bar: Any
    documents: int = 0
    lines: int = 0
    first_line: str = ""
    error: DataError | None = None  # SentencePiece reports what its iterator raised as its own RuntimeError

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._lines()
        except DataError as error:
            self.error = error
            raise

    def _lines(self) -> Iterator[str]:
        for doc in self.reader:
            self.documents += 1
            self.bar.update(1)
            for line in doc.text.splitlines():
                if not line or line.isspace():
                    continue
                if not self.first_line:
                    self.first_line = line[:80]
                # A character is at most 4 bytes: cutting at <= limit/4 characters always fits.
                while len(line.encode("utf-8")) > _MAX_SENTENCE_BYTES:
                    cut = line.rfind(" ", 1, _MAX_SENTENCE_BYTES // 4)
                    cut = cut if cut > 0 else _MAX_SENTENCE_BYTES // 4
                    self.lines += 1
                    yield line[:cut]
                    line = line[cut:]
                self.lines += 1
                yield line


def _portable_config(path: Path) -> None:
    """Name the generic fast-tokenizer class, which transformers 4 and 5 both load."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_hf_tokenizer(model_proto: bytes) -> Any:
    """A 🤗 `tokenizers.Tokenizer` equivalent to a byte-fallback SentencePiece model (see module doc)."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    pieces = [(p.piece, p.score) for p in proto.pieces]
    if proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        model = models.Unigram(pieces, unk_id=proto.trainer_spec.unk_id, byte_fallback=True)
    else:  # BPE: merges ranked by the merged piece's score, among normal pieces only
        normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == p.NORMAL}
        ranked = sorted(
            (-score, i, piece[:k], piece[k:])
            for piece, (score, i) in normal.items()
            for k in range(1, len(piece))
            if piece[:k] in normal and piece[k:] in normal
        )
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        merges = [(left, right) for _, _, left, right in ranked]
        model = models.BPE(vocab, merges, unk_token=SPECIAL_PIECES["unk"], fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Prepend("▁")  # SentencePiece's dummy prefix, always
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
            pre_tokenizers.Split("<", behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (*SPECIAL_PIECES.values(), MASK_PIECE)]
    )
    bos, eos = SPECIAL_PIECES["bos"], SPECIAL_PIECES["eos"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, tokenizer.token_to_id(bos)), (eos, tokenizer.token_to_id(eos))],
    )
    return tokenizer


def _train_sentencepiece(
    feed: _Feed,
    model_type: str,
    vocab_size: int,
    character_coverage: float,
    max_sentences: int,
    num_threads: int | None,
) -> bytes:
    """SentencePiece's model proto trained on `feed`'s lines with BART's special pieces and byte fallback."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(feed),
        model_writer=model,
        model_type=model_type,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=character_coverage,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        max_sentence_length=_MAX_SENTENCE_BYTES,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        bos_piece=SPECIAL_PIECES["bos"],
        pad_piece=SPECIAL_PIECES["pad"],
        eos_piece=SPECIAL_PIECES["eos"],
        unk_piece=SPECIAL_PIECES["unk"],
        user_defined_symbols=[MASK_PIECE],
        num_threads=num_threads or os.cpu_count() or 1,
        minloglevel=2,
    )
    return model.getvalue()


def _trained(feed: _Feed, *args: Any) -> bytes:
    """`_train_sentencepiece(feed, *args)`, its failures told as the input's (named by file and line) or its own."""
    try:
        return _train_sentencepiece(feed, *args)
    except RuntimeError as exc:
        if feed.error is not None:  # SentencePiece re-raises what its iterator raised as its own RuntimeError
            raise feed.error from None
        if feed.lines == 0:
            raise TokenizerError(
                f"no text to train on: every document was skipped ({dict(feed.reader.stats.skipped)})"
            ) from exc
        raise TokenizerError(f"SentencePiece training failed: {exc}") from exc


def _check_output(out: Path, overwrite: bool) -> None:
    """A new or empty folder; one with files only with `overwrite` (the new tokenizer then replaces it whole)."""
    if out.exists() and not out.is_dir():
        raise TokenizerError(f"--output {out} exists and is not a folder")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        raise TokenizerError(
            f"--output {out} is not empty (it holds {', '.join(held[:5])}{', ...' if len(held) > 5 else ''}): choose "
            "a new or empty folder, or pass --overwrite to replace it with the new tokenizer"
        )


def _save_hf_tokenizer(model_proto: bytes, out: Path) -> None:
    """Save the SentencePiece model as a HF tokenizer directory (`save_pretrained`, generic fast class)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=build_hf_tokenizer(model_proto),
        bos_token=SPECIAL_PIECES["bos"],
        eos_token=SPECIAL_PIECES["eos"],
        pad_token=SPECIAL_PIECES["pad"],
        unk_token=SPECIAL_PIECES["unk"],
        mask_token=MASK_PIECE,
    )
    hf.save_pretrained(str(out))
    _portable_config(out / "tokenizer_config.json")


def train_tokenizer(
    inputs: list[str],
    output_dir: str | os.PathLike,
    vocab_size: int,
    *,
    model_type: str = "bpe",
    text_field: str = "text",
    skip_bad_records: bool = False,
    dataset_split: str = "train",
    dataset_config: str | None = None,
    character_coverage: float = 0.9995,
    max_sentences: int = 5_000_000,
    seed: int = 0,
    num_threads: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> TokenizerSummary:
    """Train a byte-fallback SentencePiece tokenizer on `inputs` and save it as a HF tokenizer directory.

    `max_sentences` lines are sampled (reservoir) when the corpus has more. The vocabulary may come
    out smaller than `vocab_size` when the corpus cannot support that many pieces. `output_dir` must be new or
    empty unless `overwrite`; the tokenizer is written beside it and moved into place whole.
    """
    import sentencepiece as spm
    from tqdm.auto import tqdm

    started = time.perf_counter()
    if model_type not in ("unigram", "bpe"):
        raise TokenizerError(f"--model-type must be unigram or bpe, got {model_type!r}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(
            f"--vocab-size {vocab_size} is too small: byte fallback alone takes 256 pieces plus 5 special "
            f"tokens; use at least {MIN_VOCAB_SIZE}"
        )
    out = Path(output_dir)
    _check_output(out, overwrite)
    reader = DocumentReader(
        list(inputs),
        text_field=text_field,
        id_field=None,
        skip_bad_records=skip_bad_records,
        dataset_split=dataset_split,
        dataset_config=dataset_config,
    )
    with tqdm(desc="reading", unit=" docs", disable=not progress, mininterval=0.5) as bar:
        feed = _Feed(reader, bar)
        spm.set_random_generator_seed(seed)
        model_proto = _trained(feed, model_type, vocab_size, character_coverage, max_sentences, num_threads)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    _save_hf_tokenizer(model_proto, staging)
    publish_dir(staging, out)
    loaded = load_tokenizer(out)
    ids = special_ids(loaded)
    expected = {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 4}
    if ids != expected:
        raise TokenizerError(f"the saved tokenizer has special ids {ids}, expected {expected}")
    return TokenizerSummary(
        output=str(out),
        model_type=model_type,
        vocab_size=len(loaded),
        requested_vocab_size=vocab_size,
        documents_read=reader.stats.documents_read,
        documents_used=feed.documents,
        skipped=dict(reader.stats.skipped),
        sentences=feed.lines,
        special_ids=ids,
        example=feed.first_line,
        example_tokens=loaded.tokenize(feed.first_line),
        seconds=time.perf_counter() - started,
        read=reader.stats,
    )
