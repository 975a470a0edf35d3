"""The recall probe: does the model remember a fact stated segments earlier?

On documents of the synthetic recall corpus (`memformers.recall.corpus`), each fact is stated early ("The code of
K is V.", possibly several times in a row; the gap counts from the last) and recalled much later ("Recall: the code
of K is V."; with several rounds of recalls, the first is probed). For every fact whose recall lies at least
`min_gap` segments after its statement, the document is segmented exactly as the sharder does, its segments are
run through the model in order carrying the memory, and at the recall's segment the value is replaced by one
`<mask>` in the encoder input. Every value of the closed set is then scored as the decoder's target (the clean
segment with that value in place); the prediction is the most likely one. The same is done with the memory reset
at the recall's segment: then the value is not in the input at all, and accuracy should sit at chance
(1 / number of values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from memformers.data import segment_ends, sentence_end_table
from memformers.training.recurrence import decoder_inputs

from .corpus import QUESTION, STATEMENT


@dataclass
class RecallResult:
    with_memory: float
    without_memory: float
    chance: float
    facts: int
    """Facts probed (those recalled >= min_gap segments after their statement)."""
    examples: list[dict]
    """A few probed facts with both predictions, for display."""

    def as_dict(self) -> dict:
        return {
            "recall_with_memory": self.with_memory,
            "recall_without_memory": self.without_memory,
            "recall_chance": self.chance,
            "recall_facts": self.facts,
        }


def _token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Indices [first, last) of the tokens overlapping characters [start, end)."""
    hits = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    return hits[0], hits[-1] + 1


def _value_tokens(tokenizer, key: str, value: str) -> list[int]:
    """The ids the value has in a recall sentence (tokenized in its sentence, so in-context merges match)."""
    sentence = QUESTION.format(key=key, value=value)
    encoded = tokenizer(" " + sentence, add_special_tokens=False, return_offsets_mapping=True)
    start = 1 + sentence.rindex(value)
    first, last = _token_span(encoded["offset_mapping"], start, start + len(value))
    return encoded["input_ids"][first:last]


@torch.no_grad()
def _candidate_log_likelihoods(
    model, source: torch.Tensor, memory: torch.Tensor, targets: list[list[int]], pad_id: int, decoder_start_id: int
) -> torch.Tensor:
    """log p(target_c | source, memory) for each candidate target c, in one batch: `[candidates]`."""
    count = len(targets)
    width = max(len(t) for t in targets)
    labels = torch.full((count, width), -100, dtype=torch.long, device=source.device)
    for row, target in enumerate(targets):
        labels[row, : len(target)] = torch.tensor(target, device=source.device)
    decoder_input = decoder_inputs(labels, pad_id, decoder_start_id)
    encoder = model.get_encoder()(input_ids=source[None], memory_states=memory)
    states = encoder.last_hidden_state.expand(count, -1, -1)
    out = model(
        encoder_outputs=(states,),
        decoder_input_ids=decoder_input,
        attention_mask=encoder.encoder_attention_mask.expand(count, -1),
    )
    logits = out.logits.float()
    token_loss = F.cross_entropy(
        logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100, reduction="none"
    )
    return -token_loss.view(labels.shape).sum(-1)


@torch.no_grad()
def recall_probe(
    model,
    tokenizer,
    documents: list[dict],
    *,
    segment_length: int,
    values: list[str],
    min_gap: int = 2,
    max_examples: int = 5,
) -> RecallResult:
    """Recall accuracy with the memory carried and with it reset, on `documents` (synthetic corpus records)."""
    model.eval()
    device = next(model.parameters()).device
    bos, eos, pad, mask = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.mask_token_id,
    )
    start_id = model.config.decoder_start_token_id
    is_end = sentence_end_table(tokenizer)
    value_ids = {}
    hits = {"memory": 0, "reset": 0}
    probed, examples = 0, []
    for doc in documents:
        encoded = tokenizer(doc["text"], add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = np.array(encoded["input_ids"]), encoded["offset_mapping"]
        ends = segment_ends(ids, is_end, segment_length)
        starts = np.concatenate([[0], ends[:-1]])
        segment_of = lambda token: int(np.searchsorted(ends, token, side="right"))  # noqa: E731
        probes: dict[int, list[tuple[int, int, str, str, int]]] = {}  # segment -> (first, last, key, value, gap)
        for fact in doc["facts"]:
            key, value = fact["key"], fact["value"]
            stated = doc["text"].rindex(STATEMENT.format(key=key, value=value))  # the last statement
            recall_char = doc["text"].index(QUESTION.format(key=key, value=value))
            value_char = recall_char + QUESTION.format(key=key, value=value).rindex(value)
            first, last = _token_span(offsets, value_char, value_char + len(value))
            segment = segment_of(first)
            gap = segment - segment_of(_token_span(offsets, stated, stated + 1)[0])
            if gap >= min_gap:
                probes.setdefault(segment, []).append((first, last, key, value, gap))

        memory = model.construct_memory(1)
        for segment, (lo, hi) in enumerate(zip(starts, ends)):
            clean = [bos, *ids[lo:hi].tolist(), eos]
            for first, last, key, value, gap in probes.get(segment, []):
                a, b = first - lo + 1, last - lo + 1  # positions in `clean`
                source = torch.tensor(clean[:a] + [mask] + clean[b:], device=device)
                targets = []
                for candidate in values:
                    if (key, candidate) not in value_ids:
                        value_ids[key, candidate] = _value_tokens(tokenizer, key, candidate)
                    targets.append(clean[:a] + value_ids[key, candidate] + clean[b:])
                truth = values.index(value)
                scores = {
                    "memory": _candidate_log_likelihoods(model, source, memory, targets, pad, start_id),
                    "reset": _candidate_log_likelihoods(
                        model, source, model.construct_memory(1), targets, pad, start_id
                    ),
                }
                predicted = {mode: int(s.argmax()) for mode, s in scores.items()}
                for mode in hits:
                    hits[mode] += predicted[mode] == truth
                probed += 1
                if len(examples) < max_examples:
                    examples.append(
                        {
                            "key": key,
                            "value": value,
                            "segments_after_statement": gap,
                            "predicted_with_memory": values[predicted["memory"]],
                            "predicted_without_memory": values[predicted["reset"]],
                        }
                    )
            step = model.get_encoder()(input_ids=torch.tensor([clean], device=device), memory_states=memory)
            memory = step.memory_states
    total = max(probed, 1)
    return RecallResult(hits["memory"] / total, hits["reset"] / total, 1 / len(values), probed, examples)
