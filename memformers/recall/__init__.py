"""The recall evaluation: a synthetic corpus whose facts can only be recalled through the memory, and the probe
that measures that recall on a model.

* corpus.py — the synthetic long-document corpus (`data_prep/make_synthetic.py` writes it). Plain Python.
* probe.py  — `recall_probe(model, tokenizer, documents, ...)`: recall with the memory carried vs reset.
"""

from typing import TYPE_CHECKING, Any

from .corpus import (
    FILLER_WORDS,
    QUESTION,
    STATEMENT,
    VALUE_WORDS,
    SyntheticConfig,
    chance_level,
    generate_documents,
    make_document,
    value_set,
    write_synthetic_corpus,
)

if TYPE_CHECKING:
    from .probe import RecallResult, recall_probe


def __getattr__(name: str) -> Any:
    # The probe needs torch and the model; writing the corpus (data_prep/make_synthetic.py) does not.
    if name in ("recall_probe", "RecallResult"):
        from . import probe

        return getattr(probe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FILLER_WORDS",
    "QUESTION",
    "RecallResult",
    "STATEMENT",
    "SyntheticConfig",
    "VALUE_WORDS",
    "chance_level",
    "generate_documents",
    "make_document",
    "recall_probe",
    "value_set",
    "write_synthetic_corpus",
]
