"""The memory carries a fact across segments: a tiny MemBART learns it within the test budget.

A token-level version of the synthetic recall corpus, run through the shipped model and rollout code (truncated BPTT
through the memory, the BART denoising target): each document is 3 segments of random filler tokens; segment 0
states a value (a marker token, then one of 16 value tokens), segment 2 recalls it (the marker, then `<mask>` in the
encoder input, the value in the target). Segment 1 is filler only, so the recall is 2 segments after the statement
and the value can reach it only through the memory.

Training documents state their value 1..8 times (the curriculum of `SyntheticConfig.max_repeats`: a value stated
once is too faint for a fresh memory to pick up, and a model trained on single statements stays at chance); the
held-out documents state it once. With memory the model recalls them; with the memory reset at the recall's segment
it is at chance (1/16).
"""

from __future__ import annotations

import pytest
import torch

from memformers.models.membart import MemBartForConditionalGeneration, load_preset
from memformers.training.recurrence import loss_weights, run_rollout, segment_forward

pytestmark = pytest.mark.slow  # 150 training steps in-process: ~35 s on 2 cores

BOS, PAD, EOS, MASK, STATE, RECALL = 0, 1, 2, 4, 5, 6
VALUE0, VALUES, FILLER0, VOCAB = 10, 16, 100, 512
LENGTH, GAP, LANES, STEPS = 32, 2, 16, 150


def documents(seed: int, count: int, max_statements: int) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """`GAP + 1` segment batches of `count` documents, the recall positions and the values."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(FILLER0, VOCAB, (count, GAP + 1, LENGTH), generator=gen)
    clean[:, :, 0], clean[:, :, -1] = BOS, EOS
    values = VALUE0 + torch.randint(VALUES, (count,), generator=gen)
    recall_at = 1 + torch.randint(LENGTH - 3, (count,), generator=gen)
    for doc in range(count):
        statements = 1 + int(torch.randint(max_statements, (), generator=gen))
        for slot in torch.randperm(LENGTH // 2 - 1, generator=gen)[:statements]:
            clean[doc, 0, 2 * slot + 1], clean[doc, 0, 2 * slot + 2] = STATE, values[doc]
        clean[doc, GAP, recall_at[doc]], clean[doc, GAP, recall_at[doc] + 1] = RECALL, values[doc]
    source = clean.clone()
    source[torch.arange(count), GAP, recall_at + 1] = MASK
    batches = [
        {
            "source_ids": source[:, t].contiguous(),
            "source_mask": torch.ones(count, LENGTH, dtype=torch.bool),
            "labels": clean[:, t].contiguous(),
            "resets": torch.full((count,), t == 0),
        }
        for t in range(GAP + 1)
    ]
    return batches, recall_at + 1, values


@torch.no_grad()
def recall_accuracy(model, reset_at_recall: bool) -> float:
    batches, position, values = documents(seed=10_000, count=256, max_statements=1)
    model.eval()
    memory = model.construct_memory(256)
    for batch in batches[:GAP]:
        memory = segment_forward(model, batch, memory, pad_id=PAD, decoder_start_id=EOS)[2]
    last = batches[GAP]
    resets = torch.ones(256, dtype=torch.bool) if reset_at_recall else last["resets"]
    logits = model(
        input_ids=last["source_ids"], memory_states=memory, memory_resets=resets, labels=last["labels"]
    ).logits
    predicted = VALUE0 + logits[torch.arange(256), position, VALUE0 : VALUE0 + VALUES].argmax(-1)
    model.train()
    return float((predicted == values).float().mean())


def test_memory_carries_a_fact_two_segments() -> None:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic whatever the machine: the outcome is a pure function of seeds
    try:
        config = load_preset("tiny", vocab_size=VOCAB, max_position_embeddings=64)
        model = MemBartForConditionalGeneration(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98), weight_decay=0.01)
        weights = loss_weights(GAP + 1, "uniform")
        before = recall_accuracy(model, reset_at_recall=False)
        for step in range(1, STEPS + 1):
            for group in optimizer.param_groups:
                group["lr"] = 2e-3 * min(1.0, step / 50)
            batches, _, _ = documents(seed=step, count=LANES, max_statements=8)
            result = run_rollout(
                model, batches, model.construct_memory(LANES), weights, replay=False, pad_id=PAD, decoder_start_id=EOS
            )
            result.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        with_memory = recall_accuracy(model, reset_at_recall=False)
        without_memory = recall_accuracy(model, reset_at_recall=True)
    finally:
        torch.set_num_threads(threads)
    chance = 1 / VALUES
    # 256 held-out facts: the standard error of an accuracy near chance is about 0.015
    assert before < chance + 0.08, f"recall before training {before:.3f} should be at chance {chance:.3f}"
    assert without_memory < chance + 0.08, f"recall with the memory reset {without_memory:.3f} should be at chance"
    assert with_memory > 0.6, (
        f"recall through memory {with_memory:.3f} (reset: {without_memory:.3f}, chance {chance:.3f})"
    )
