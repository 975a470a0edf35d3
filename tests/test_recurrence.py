"""Memory recurrence: rollout losses, memory hand-over, replay == BPTT (plain PyTorch; DeepSpeed in test_engine)."""

import pytest
import torch

from memformers.models.membart import MemBartConfig, MemBartForConditionalGeneration
from memformers.training.recurrence import decoder_inputs, loss_weights, run_rollout, segment_forward

CFG = dict(
    vocab_size=64,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_position_embeddings=64,
    memory_len=4,
    dropout=0.1,
    init_std=0.1,
)
LANES, PAD, START = 3, 1, 2


def make_model(seed=0):
    torch.manual_seed(seed)
    return MemBartForConditionalGeneration(MemBartConfig(**CFG)).train()


def make_segments(count: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    segments = []
    for t in range(count):
        ids = torch.randint(4, 64, (LANES, 10), generator=g)
        ids[:, 0], ids[:, -1] = 0, 2
        source = ids.clone()
        source[:, 3:5] = 3  # a "mask"
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[2, 7:] = False
        labels = ids.masked_fill(~mask, -100)
        labels[1] = -100  # lane 1 is a padding lane
        segments.append(
            {
                "source_ids": source,
                "source_mask": mask,
                "labels": labels,
                "resets": torch.tensor([t == 0, t == 0, t == 2]),
                "valid": torch.tensor([True, False, True]),
                "segment_index": torch.tensor([t, -1, t % 2]),
            }
        )
    return segments


def test_loss_weights():
    assert loss_weights(4, "uniform") == [0.25] * 4
    w = loss_weights(3, "exponential")
    assert w == pytest.approx([2 / 14, 4 / 14, 8 / 14]) and sum(w) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        loss_weights(2, "linear")


def test_decoder_inputs_shift_labels_right():
    labels = torch.tensor([[0, 5, 6, 2, -100]])
    assert decoder_inputs(labels, PAD, START).tolist() == [[2, 0, 5, 6, 2]]


def test_segment_forward_counts_only_target_tokens():
    model = make_model()
    seg = make_segments(1)[0]
    loss, tokens, memory = segment_forward(
        model, seg, model.construct_memory(LANES), pad_id=PAD, decoder_start_id=START
    )
    assert tokens.tolist() == [10, 0, 7]
    assert loss[1].item() == 0.0 and loss[0].item() > 0
    assert memory.shape == (LANES, CFG["memory_len"], CFG["d_model"])


def rollout_grads(replay: bool, weighting: str = "exponential"):
    model = make_model()
    torch.manual_seed(123)  # dropout draws: identical in both modes (checkpointing restores the RNG on recompute)
    memory = torch.randn(LANES, CFG["memory_len"], CFG["d_model"])
    result = run_rollout(
        model, make_segments(4), memory, loss_weights(4, weighting), replay=replay, pad_id=PAD, decoder_start_id=START
    )
    result.loss.backward()
    return result, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_replay_gives_the_same_loss_memory_and_gradients_as_bptt():
    plain, plain_grads = rollout_grads(replay=False)
    replay, replay_grads = rollout_grads(replay=True)
    assert int(plain.tokens) == int(replay.tokens) == 4 * 17
    assert plain.loss.item() == pytest.approx(replay.loss.item(), rel=1e-6)
    torch.testing.assert_close(plain.memory, replay.memory)
    assert not replay.memory.requires_grad
    assert plain_grads.keys() == replay_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(replay_grads[name], plain_grads[name], atol=1e-6, rtol=1e-4, msg=name)
    # the memory path carries gradient: the memory weights of every layer are trained
    assert plain_grads["model.encoder.layers.0.self_attn.mem_q_proj.weight"].abs().sum() > 0
    assert plain_grads["model.encoder.memory_gate_net.dense2.weight"].abs().sum() > 0


def test_gradient_flows_back_through_memory_to_earlier_segments():
    """With loss only on the last segment, the first segment's encoder input still receives gradient: the
    rollout is truncated BPTT through the memory, not independent segments."""
    model = make_model()
    segments = make_segments(3)
    for seg in segments[:-1]:
        seg["labels"] = torch.full_like(seg["labels"], -100)
    segments[-1]["resets"] = torch.zeros(LANES, dtype=torch.bool)
    embeddings = []

    def keep(module, args, out):
        out.retain_grad()
        embeddings.append(out)

    handle = model.model.encoder.embed_tokens.register_forward_hook(keep)
    result = run_rollout(
        model,
        segments,
        model.construct_memory(LANES),
        loss_weights(3, "uniform"),
        replay=False,
        pad_id=PAD,
        decoder_start_id=START,
    )
    result.loss.backward()
    handle.remove()
    assert embeddings[0].grad is not None and embeddings[0].grad[0].abs().sum() > 0
