"""Minimal memory diagnostic (research scratch): can the tiny MemBART learn to carry one token across segments?

Each rollout is one document per lane of `gap + 1` segments of random filler tokens. Segment 0 holds a statement
(marker STATE, then a value out of `--values`), segment `gap` a recall (marker RECALL, then `<mask>` in the encoder
input); the decoder's target is always the clean segment, so the value at the recall is predictable only through
the memory. Prints recall accuracy with memory and with the memory reset at the recall's segment.

    python experiments/memory_copy.py --gap 2 --steps 600
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from memformers.models.membart import MemBartForConditionalGeneration, load_preset  # noqa: E402
from memformers.training.recurrence import loss_weights, run_rollout, segment_forward  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--gap", type=int, default=2)
p.add_argument(
    "--lead",
    type=int,
    default=0,
    help="filler-only segments before the statement (memory not fresh when it is written)",
)
p.add_argument(
    "--fresh",
    action="store_true",
    help="reset the memory at the statement segment (tells --lead's two effects apart: T vs a used memory)",
)
p.add_argument("--fixed-lead", action="store_true", help="the lead segments are the same filler in every document")
p.add_argument("--len", type=int, default=32)
p.add_argument("--values", type=int, default=16)
p.add_argument("--lanes", type=int, default=16)
p.add_argument("--steps", type=int, default=600)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--mask", type=float, default=0.0, help="extra random masking of filler tokens")
p.add_argument("--memory-len", type=int, default=8)
p.add_argument("--gate-bias", type=float, default=None)
p.add_argument(
    "--mem-q-std",
    type=float,
    default=None,
    help="re-initialise the memory rows' query projections (0: queries independent of the carried memory)",
)
p.add_argument("--memory-bias-std", type=float, default=None, help="re-initialise memory_bias with this std")
p.add_argument("--init-std", type=float, default=0.1)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--copies", type=int, default=1, help="statements of the value in segment 0")
p.add_argument("--recall-mask", type=float, default=1.0, help="probability that a recall's value is masked")
p.add_argument("--mix", action="store_true", help="train on 1..copies statements per document, evaluate on 1")
p.add_argument("--eval-every", type=int, default=100)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--threads", type=int, default=1)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
BOS, PAD, EOS, MASK, STATE, RECALL = 0, 1, 2, 4, 5, 6
VALUE0, FILLER0, VOCAB = 10, 100, 1024
STATEMENT_SEGMENT, RECALL_SEGMENT = a.lead, a.lead + a.gap
SEGMENTS = RECALL_SEGMENT + 1


def document(gen: torch.Generator, copies: int):
    """`lead + gap + 1` clean segments `[S, len]`, the sources, the recall position and the value."""
    T, L, S, R = SEGMENTS, a.len, STATEMENT_SEGMENT, RECALL_SEGMENT
    clean = torch.randint(FILLER0, VOCAB, (T, L), generator=gen)
    if (
        a.fixed_lead
    ):  # the memory is used, but by the same content in every lane: no lane-to-lane noise before the write
        clean[:S] = torch.randint(FILLER0, VOCAB, (S, L), generator=torch.Generator().manual_seed(12345))
    clean[:, 0], clean[:, -1] = BOS, EOS
    value = VALUE0 + int(torch.randint(a.values, (), generator=gen))
    s = 1 + int(torch.randint(L - 3, (), generator=gen))
    clean[S, s], clean[S, s + 1] = STATE, value
    extra = torch.randperm(L // 2 - 2, generator=gen)[: copies - 1] * 2 + 1
    clean[S, extra], clean[S, extra + 1] = STATE, value
    r = 1 + int(torch.randint(L - 3, (), generator=gen))
    clean[R, r], clean[R, r + 1] = RECALL, value
    source = clean.clone()
    if a.mask:
        noise = torch.rand(T, L, generator=gen) < a.mask
        noise[:, 0] = noise[:, -1] = False
        source[noise] = MASK
    source[S] = torch.where(clean[S] == STATE, clean[S], source[S])
    source[S] = torch.where((clean[S] >= VALUE0) & (clean[S] < FILLER0), clean[S], source[S])
    source[R, r] = RECALL
    if torch.rand((), generator=gen) < a.recall_mask:
        source[R, r + 1] = MASK
    else:  # visible in the input: nothing to learn from memory at this recall
        source[R, r + 1] = value
    return clean, source, r + 1, value


def batches(step: int, lanes: int, salt: int):
    gen = torch.Generator().manual_seed(a.seed * 1_000_003 + salt * 7919 + step)
    docs = [
        document(gen, 1 if salt else 1 + int(torch.randint(a.copies, (), generator=gen)) if a.mix else a.copies)
        for _ in range(lanes)
    ]
    segs = []
    for t in range(SEGMENTS):
        segs.append(
            {
                "source_ids": torch.stack([d[1][t] for d in docs]),
                "source_mask": torch.ones(lanes, a.len, dtype=torch.bool),
                "labels": torch.stack([d[0][t] for d in docs]),
                "resets": torch.full((lanes,), t == 0 or (a.fresh and t == STATEMENT_SEGMENT)),
            }
        )
    return segs, torch.tensor([d[2] for d in docs]), torch.tensor([d[3] for d in docs])


@torch.no_grad()
def evaluate(model, n=256):
    model.eval()
    segs, pos, value = batches(0, n, salt=1)
    acc = {}
    for mode in ("memory", "reset"):
        memory = model.construct_memory(n)
        for t, batch in enumerate(segs):
            resets = torch.ones(n, dtype=torch.bool) if (mode == "reset" and t == RECALL_SEGMENT) else None
            if t < RECALL_SEGMENT:
                _, _, memory = segment_forward(model, batch, memory, pad_id=PAD, decoder_start_id=EOS)
                continue
            out = model(
                input_ids=batch["source_ids"],
                memory_states=memory,
                memory_resets=batch["resets"] if resets is None else resets,
                labels=batch["labels"],
            )
            logits = out.logits[torch.arange(n), pos, VALUE0 : VALUE0 + a.values]
            acc[mode] = float((logits.argmax(-1) + VALUE0 == value).float().mean())
    model.train()
    return acc


cfg = load_preset(
    "tiny",
    vocab_size=VOCAB,
    memory_len=a.memory_len,
    max_position_embeddings=max(64, a.len + 4),
    init_std=a.init_std,
    encoder_layers=a.layers,
    decoder_layers=a.layers,
)
model = MemBartForConditionalGeneration(cfg).train()
if a.gate_bias is not None:
    torch.nn.init.constant_(model.model.encoder.memory_gate_net.dense2.bias, a.gate_bias)
if a.mem_q_std is not None:
    for layer in model.model.encoder.layers:
        torch.nn.init.normal_(layer.self_attn.mem_q_proj.weight, std=a.mem_q_std)
if a.memory_bias_std is not None:
    torch.nn.init.normal_(model.model.encoder.memory_bias, std=a.memory_bias_std)
opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)
weights = loss_weights(SEGMENTS, "uniform")
t0 = time.time()
for step in range(1, a.steps + 1):
    segs, _, _ = batches(step, a.lanes, salt=0)
    lr = a.lr * min(1.0, step / 50)
    for g in opt.param_groups:
        g["lr"] = lr
    res = run_rollout(
        model, segs, model.construct_memory(a.lanes), weights, replay=False, pad_id=PAD, decoder_start_id=EOS
    )
    res.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    if step % a.eval_every == 0:
        acc = evaluate(model)
        print(
            f"step {step} loss {res.loss_sum / res.tokens:.3f} recall memory {acc['memory']:.3f} "
            f"reset {acc['reset']:.3f} chance {1 / a.values:.3f} ({time.time() - t0:.0f}s)",
            flush=True,
        )
