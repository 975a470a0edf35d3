"""Recall experiments for issue 6 (research scratch, not part of the product): a synthetic-corpus variant ->
shards -> single-process fp32 BPTT training with the shipped rollout code -> the recall probe every N steps.

    python experiments/recall_harness.py NAME [--recalls 6 --spacing 40,60 --gate-bias -2 --chain 120,140 ...]

Writes /tmp/rx/NAME/{corpus.jsonl,shards,model.pt}; reuses the tokenizer of runs/demo (run `make demo` once).
--repeats R --recalls K --spacing-words W use the shipped generator (SyntheticConfig.max_repeats / recalls_per_fact /
recall_spacing_words) and probe held-out documents whose facts are stated once, --val-gap words before the recall.
--cycle N makes filler a fixed story of N sentences read cyclically.
--oracle only|add masks every recall's value in the encoder input (only: no other noise; add: on top of BART's),
to tell the noise's share of the difficulty from the rest. Results of sessions 2-4 are in NOTES.md.
"""

import argparse
import json
import os
import random
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from memformers.data import SegmentStreamLoader, load_tokenizer, shard_documents, split_of  # noqa: E402
from memformers.models.membart import MemBartForConditionalGeneration, load_preset  # noqa: E402
from memformers.noising import BartDenoiser, DenoisingConfig, token_tables  # noqa: E402
from memformers.recall import corpus as syn  # noqa: E402
from memformers.recall import recall_probe  # noqa: E402
from memformers.training.recurrence import loss_weights, run_rollout  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("name")
p.add_argument("--docs", type=int, default=3000)
p.add_argument("--facts", type=int, default=1)
p.add_argument("--recalls", type=int, default=1)
p.add_argument("--values", type=int, default=16)
p.add_argument("--gap", type=int, default=128)
p.add_argument("--lead", type=int, default=30)
p.add_argument("--spacing", type=str, default="5,20")
p.add_argument("--spacing-words", type=int, default=40, help="SyntheticConfig.recall_spacing_words (with --repeats)")
p.add_argument("--memory-len", type=int, default=8)
p.add_argument("--d-model", type=int, default=128)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--T", type=int, default=8)
p.add_argument("--lanes", type=int, default=8)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--steps", type=int, default=1200)
p.add_argument("--mask", type=float, default=0.3)
p.add_argument("--permute", type=float, default=1.0)
p.add_argument("--gate-bias", type=float, default=None)
p.add_argument("--eval-every", type=int, default=200)
p.add_argument("--init-std", type=float, default=0.1)
p.add_argument("--bf16", action="store_true")
p.add_argument(
    "--repeats",
    type=int,
    default=None,
    help="SyntheticConfig.max_repeats: the shipped generator, probed on facts stated once",
)
p.add_argument("--repeat-filler", type=int, default=8)
p.add_argument("--lead-words", type=int, default=30, help="SyntheticConfig.lead_words (with --repeats)")
p.add_argument("--val-gap", type=int, default=128, help="gap words of the held-out single-statement probe documents")
p.add_argument("--seg", type=int, default=64)
p.add_argument(
    "--oracle",
    choices=["none", "only", "add"],
    default="none",
    help="mask every recall's value in the encoder input: 'only' no other noise, 'add' on top of BART's noise",
)
p.add_argument(
    "--cycle", type=int, default=0, help="filler read cyclically from a fixed story of N sentences (low-entropy filler)"
)
p.add_argument("--seed", type=int, default=1)
p.add_argument("--chain", type=str, default=None)
p.add_argument("--emph", type=int, default=1)
p.add_argument("--min-gap", type=int, default=2)
p.add_argument("--short-keys", action="store_true", help="SyntheticConfig.short_keys (with --repeats)")
a = p.parse_args()
if a.cycle:  # session 5: does predictable filler (its loss learnable, so the facts' share of the gradient grows) help?
    CYCLE = [syn._sentence(random.Random(f"cycle:{i}")) for i in range(a.cycle)]

    def _cycle_filler(rng, min_words):
        i, out, words = rng.randrange(a.cycle), [], 0
        while words < min_words:
            out.append(CYCLE[i % a.cycle])
            words += len(out[-1].split())
            i += 1
        return out

    syn.filler = _cycle_filler
torch.set_num_threads(1)
torch.manual_seed(a.seed)
root = f"/tmp/rx/{a.name}"
os.makedirs(root, exist_ok=True)
lo_sp, hi_sp = map(int, a.spacing.split(","))


def make_chain_doc(i):
    rng = random.Random(f"rx:{i}")
    lo, hi = map(int, a.chain.split(","))
    values = syn.value_set(a.values)
    taken = set()
    facts = []
    for _ in range(a.facts):
        facts.append({"key": syn._key(rng, taken), "value": rng.choice(values)})
    s = syn.filler(rng, rng.randint(0, 20))
    for j in range(a.facts + 1):
        if j < a.facts:
            s.append(syn.STATEMENT.format(**facts[j]))
        if j >= 1:
            s.append(syn.QUESTION.format(**facts[j - 1]))
        s += syn.filler(rng, rng.randint(lo, hi))
    return {"id": f"rx-{i}", "text": " ".join(s), "facts": facts}


def make_doc(i):
    if a.chain:
        return make_chain_doc(i)
    if a.repeats:
        return syn.make_document(
            i,
            syn.SyntheticConfig(
                a.seed,
                a.values,
                a.facts,
                a.gap,
                a.repeats,
                a.repeat_filler,
                a.recalls,
                a.spacing_words,
                a.lead_words,
                a.short_keys,
            ),
        )
    rng = random.Random(f"rx:{i}")
    values = syn.value_set(a.values)
    taken = set()
    facts = []
    for _ in range(a.facts):
        k, v = syn._key(rng, taken), rng.choice(values)
        facts.append({"key": k, "value": v})
    s = syn.filler(rng, rng.randint(0, a.lead))
    for f in facts:
        for _ in range(a.emph):
            s.append(syn.STATEMENT.format(key=f["key"], value=f["value"]))
        s += syn.filler(rng, rng.randint(lo_sp, hi_sp))
    s += syn.filler(rng, a.gap)
    for r in range(a.recalls):
        for f in rng.sample(facts, len(facts)):
            s.append(syn.QUESTION.format(key=f["key"], value=f["value"]))
            s += syn.filler(rng, rng.randint(lo_sp, hi_sp))
    s += syn.filler(rng, rng.randint(0, a.lead))
    return {"id": f"rx-{i}", "text": " ".join(s), "facts": facts}


corpus = f"{root}/corpus.jsonl"
shards = f"{root}/shards"
if not os.path.exists(f"{shards}/manifest.json"):
    with open(corpus, "w") as f:
        for i in range(a.docs):
            f.write(json.dumps(make_doc(i)) + "\n")
    shard_documents(
        [corpus], os.path.join(REPO, "runs/demo/tokenizer"), shards, a.seg, workers=1, val_fraction=0.05, progress=False
    )
docs = [json.loads(line) for line in open(corpus)]
val = [d for d in docs if split_of(d["text"].encode(), 0.05) == "val"][:100]
if a.repeats:  # held-out documents (another seed) whose facts are stated once
    val = list(
        syn.generate_documents(
            100, syn.SyntheticConfig(a.seed + 1000, a.values, a.facts, a.val_gap, 1, short_keys=a.short_keys)
        )
    )
words = sum(len(d["text"].split()) for d in docs) / len(docs)
tok = load_tokenizer(shards)
den = BartDenoiser(
    DenoisingConfig(mask_ratio=a.mask, permute_sentence_ratio=a.permute),
    token_tables(tok),
    mask_id=tok.mask_token_id,
    bos_id=0,
    eos_id=2,
    pad_id=1,
    vocab_size=len(tok),
    seed=a.seed,
)
RECALL_ID = tok.convert_tokens_to_ids("▁Recall")
VALUE_IDS = torch.tensor([tok.convert_tokens_to_ids("▁" + v) for v in syn.value_set(a.values)])


def recall_value_mask(ids):  # value tokens within 19 tokens after a "Recall"
    is_value = torch.isin(ids, VALUE_IDS)
    recall = (ids == RECALL_ID).float()
    near = torch.nn.functional.conv1d(recall[:, None], torch.ones(1, 1, 20), padding=19)[:, 0, : ids.shape[1]] > 0
    return is_value & near


def transform(batch):
    if a.oracle == "none":
        return den.collate(batch)
    clean = batch["input_ids"]
    masked = clean.masked_fill(recall_value_mask(clean), tok.mask_token_id)
    if a.oracle == "add":
        out = den.collate(dict(batch, input_ids=masked))
        out["input_ids"] = clean
        out["labels"] = clean.clone().long().masked_fill(~batch["attention_mask"].bool(), -100)
        out["labels"][~batch["valid"].bool()] = -100
        return out
    out = den.collate(batch)
    out.update(source_ids=masked, source_mask=batch["attention_mask"].bool())
    return out


loader = SegmentStreamLoader(
    shards,
    "train",
    rank=0,
    world_size=1,
    lanes=a.lanes,
    segment_length=a.seg,
    seed=a.seed,
    epochs=None,
    transform=transform,
)
cfg = load_preset(
    "tiny",
    vocab_size=len(tok),
    memory_len=a.memory_len,
    d_model=a.d_model,
    init_std=a.init_std,
    encoder_layers=a.layers,
    decoder_layers=a.layers,
)
model = MemBartForConditionalGeneration(cfg).train()
if a.gate_bias is not None:
    torch.nn.init.constant_(model.model.encoder.memory_gate_net.dense2.bias, a.gate_bias)
opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 50) * max(0.1, 1 - s / a.steps))
weights = loss_weights(a.T, "uniform")
values = sorted(syn.value_set(a.values))
print(f"[{a.name}] {vars(a)} words/doc {words:.0f}", flush=True)
memory = model.construct_memory(a.lanes)
it = iter(loader)
t0 = time.time()
run = 0.0
for step in range(1, a.steps + 1):
    segs = [next(it) for _ in range(a.T)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
        res = run_rollout(model, segs, memory, weights, replay=False, pad_id=1, decoder_start_id=2)
    res.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    sched.step()
    memory = res.memory
    run = 0.98 * run + 0.02 * res.loss_sum / res.tokens if step > 1 else res.loss_sum / res.tokens
    if step % a.eval_every == 0 or step == a.steps:
        r = recall_probe(model, tok, val, segment_length=a.seg, values=values, min_gap=a.min_gap)
        model.train()
        print(
            f"[{a.name}] step {step} loss {run:.3f} recall mem {r.with_memory:.3f} reset {r.without_memory:.3f} "
            f"n={r.facts} ({time.time() - t0:.0f}s)",
            flush=True,
        )
        torch.save(model.state_dict(), f"{root}/model.pt")
