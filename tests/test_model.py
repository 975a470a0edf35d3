"""MemBART model tests: the reference semantics, memory behaviour, HF integration. Tiny random models, no downloads."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSeq2SeqLM,
    BartConfig,
    BartForConditionalGeneration,
)

from memformers.models.membart import (
    MemBartConfig,
    MemBartForConditionalGeneration,
    MemBartModel,
    load_preset,
)

TINY = dict(
    vocab_size=97,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_position_embeddings=64,
    dropout=0.0,
    memory_len=5,
    init_std=0.2,
)


def tiny_model(seed: int = 0, **overrides) -> MemBartForConditionalGeneration:
    torch.manual_seed(seed)
    model = MemBartForConditionalGeneration(MemBartConfig(**{**TINY, **overrides})).eval()
    # LayerNorms start as identity; perturb them so a wrong weight mapping cannot hide
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name or "layernorm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def random_ids(batch: int, seq: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, TINY["vocab_size"], (batch, seq), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    return ids


# ------------------------------------------------------------------ the reference's computation, written out by hand


def reference_encoder(encoder, input_ids, memory_states, memory_resets, attention_mask):
    """A literal transcription of qywu/memformers' MemBartEncoder.forward (eval mode): float additive masks built
    with a Python loop over memory slots, queries pre-scaled, bmm attention. Uses `encoder`'s weights."""
    cfg = encoder.config
    bsz, seq = input_ids.shape
    mem_len, d, heads = cfg.memory_len, cfg.d_model, cfg.encoder_attention_heads
    head_dim = d // heads
    h = encoder.embed_tokens(input_ids) + encoder.embed_positions(input_ids)
    h = encoder.layernorm_embedding(h)
    mask = F.pad(attention_mask.bool(), (mem_len, 0), value=True)
    expanded = mask[:, None, None, :].expand(bsz, 1, mem_len + seq, mem_len + seq).float()
    float_mask = (1.0 - expanded).masked_fill((1.0 - expanded).bool(), torch.finfo(torch.float32).min)
    float_mask[:, :, :mem_len, :mem_len] = torch.finfo(torch.float32).min
    for i in range(mem_len):
        float_mask[:, :, i, i] = 0
    m = encoder.memory_layer_norm((1 - memory_resets.float()).view(bsz, 1, 1) * memory_states + encoder.memory_bias)
    old_m = m
    for layer in encoder.layers:
        att = layer.self_attn
        q = torch.cat([att.mem_q_proj(m), att.q_proj(h)], 1) * att.scaling
        k = torch.cat([att.mem_k_proj(m), att.k_proj(h)], 1)
        v = torch.cat([att.mem_v_proj(m), att.v_proj(h)], 1)

        def shape(x):
            return x.view(bsz, -1, heads, head_dim).transpose(1, 2).reshape(bsz * heads, -1, head_dim)

        w = torch.bmm(shape(q), shape(k).transpose(1, 2)).view(bsz, heads, mem_len + seq, mem_len + seq) + float_mask
        w = w.view(bsz * heads, mem_len + seq, mem_len + seq).softmax(-1)
        o = torch.bmm(w, shape(v)).view(bsz, heads, -1, head_dim).transpose(1, 2).reshape(bsz, -1, d)
        mo, to = att.mem_out_proj(o[:, :mem_len]), att.out_proj(o[:, mem_len:])
        h = layer.self_attn_layer_norm(h + to)
        h = layer.final_layer_norm(h + layer.fc2(F.gelu(layer.fc1(h))))
        m = layer.mem_self_attn_layer_norm(m + mo)
        m = layer.mem_final_layer_norm(m + layer.mem_fc2(F.gelu(layer.mem_fc1(m))))
    g = encoder.memory_gate_net
    alpha = torch.sigmoid(g.dense2(F.gelu(g.dense(m))))
    m = alpha * m + (1 - alpha) * old_m
    return torch.cat([m, h], 1), m


@torch.no_grad()
def test_encoder_matches_reference_computation_with_padding_and_resets():
    model = tiny_model()
    ids = random_ids(3, 11, seed=1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 3:] = False
    memory = torch.randn(3, TINY["memory_len"], TINY["d_model"])
    resets = torch.tensor([0, 1, 0])
    out = model.model.encoder(input_ids=ids, memory_states=memory, memory_resets=resets, attention_mask=mask)
    ref_states, ref_memory = reference_encoder(model.model.encoder, ids, memory, resets, mask)
    torch.testing.assert_close(out.last_hidden_state, ref_states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.memory_states, ref_memory, atol=1e-5, rtol=1e-5)
    assert out.encoder_attention_mask.shape == (3, TINY["memory_len"] + 11)
    assert out.encoder_attention_mask[:, : TINY["memory_len"]].all()
    assert torch.equal(out.encoder_attention_mask[:, TINY["memory_len"] :], mask)


def test_fused_mask_semantics():
    from memformers.models.membart.modeling_membart import fused_attention_mask

    token_mask = torch.tensor([[True, True, False]])
    mask = fused_attention_mask(token_mask, memory_len=2)[0, 0]
    expected = torch.tensor(
        [  # keys: m0 m1 t0 t1 t2(pad)
            [1, 0, 1, 1, 0],  # memory slot 0 sees itself and the non-pad tokens
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 0],  # tokens see all memory and the non-pad tokens
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


@torch.no_grad()
def test_padding_does_not_change_memory_or_real_token_states():
    model = tiny_model()
    ids = random_ids(1, 9, seed=2)
    padded = torch.cat([ids, torch.full((1, 4), 1)], 1)
    mask = torch.cat([torch.ones(1, 9), torch.zeros(1, 4)], 1)
    memory = torch.randn(1, TINY["memory_len"], TINY["d_model"])
    plain = model.model.encoder(input_ids=ids, memory_states=memory)
    pad = model.model.encoder(input_ids=padded, memory_states=memory, attention_mask=mask)
    torch.testing.assert_close(pad.memory_states, plain.memory_states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        pad.last_hidden_state[:, : TINY["memory_len"] + 9], plain.last_hidden_state, atol=1e-5, rtol=1e-5
    )
    # ... and the decoder ignores the padded tokens through the cross-attention mask
    labels = random_ids(1, 6, seed=3)
    a = model(input_ids=ids, memory_states=memory, labels=labels).logits
    b = model(input_ids=padded, attention_mask=mask, memory_states=memory, labels=labels).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_reset_lanes_forget_and_others_remember():
    model = tiny_model()
    ids = random_ids(2, 8, seed=4)
    mem_a = torch.randn(2, TINY["memory_len"], TINY["d_model"])
    mem_b = torch.randn(2, TINY["memory_len"], TINY["d_model"])
    resets = torch.tensor([True, False])
    out_a = model.model.encoder(input_ids=ids, memory_states=mem_a, memory_resets=resets)
    out_b = model.model.encoder(input_ids=ids, memory_states=mem_b, memory_resets=resets)
    fresh = model.model.encoder(input_ids=ids, memory_states=model.construct_memory(2))
    # lane 0 was reset: its past memory is gone, it equals a fresh start
    torch.testing.assert_close(out_a.last_hidden_state[0], out_b.last_hidden_state[0])
    torch.testing.assert_close(out_a.last_hidden_state[0], fresh.last_hidden_state[0])
    # lane 1 was not: different pasts give different outputs
    assert (out_a.last_hidden_state[1] - out_b.last_hidden_state[1]).abs().max() > 1e-3


@torch.no_grad()
def test_memory_carries_information_across_segments():
    model = tiny_model()
    first_x, first_y, second = random_ids(1, 10, 5), random_ids(1, 10, 6), random_ids(1, 10, 7)
    labels = random_ids(1, 10, 8)
    outs = []
    for first in (first_x, first_y):
        memory = model(input_ids=first, memory_states=model.construct_memory(1), labels=labels).memory_states
        outs.append(model(input_ids=second, memory_states=memory, labels=labels).logits)
    assert (outs[0] - outs[1]).abs().max() > 1e-4
    # with the memory reset at the second segment, the first segment no longer matters
    outs = []
    for first in (first_x, first_y):
        memory = model(input_ids=first, labels=labels).memory_states
        outs.append(
            model(input_ids=second, memory_states=memory, memory_resets=torch.tensor([1]), labels=labels).logits
        )
    torch.testing.assert_close(outs[0], outs[1])


def test_forward_returns_loss_logits_memory_and_gradients_flow_through_memory():
    model = tiny_model().train()
    ids, labels = random_ids(2, 8, 9), random_ids(2, 7, 10)
    memory = torch.randn(2, TINY["memory_len"], TINY["d_model"], requires_grad=True)
    out = model(input_ids=ids, memory_states=memory, memory_resets=torch.tensor([0, 0]), labels=labels)
    assert out.logits.shape == (2, 7, TINY["vocab_size"])
    assert out.memory_states.shape == memory.shape
    expected = F.cross_entropy(out.logits.reshape(-1, TINY["vocab_size"]), labels.reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    (out.loss + out.memory_states.sum()).backward()
    assert memory.grad is not None and memory.grad.abs().sum() > 0


def test_save_pretrained_round_trip_safetensors(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "membart"
    loaded, info = MemBartForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, labels = random_ids(2, 9, 11), random_ids(2, 5, 12)
    with torch.no_grad():
        a = model(input_ids=ids, labels=labels)
        b = loaded.eval()(input_ids=ids, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.memory_states, b.memory_states, atol=1e-6, rtol=0)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.shared.weight.data_ptr()  # still tied


def test_reference_format_state_dict_loads_with_no_missing_or_unexpected_keys(tmp_path):
    """The reference saved every key (tied copies included) with a `model_type: bart` config carrying memory_len,
    through `torch.save`. Such a directory must load cleanly and give the same outputs."""
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
        assert key in state
    torch.save(state, tmp_path / "pytorch_model.bin")
    config = {**TINY, "model_type": "bart", "architectures": ["BartForConditionalGeneration"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded, info = MemBartForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    ids = random_ids(1, 9, 13)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_parameter_names_are_the_references():
    names = set(tiny_model().state_dict())
    per_layer = [
        f"self_attn.{p}_proj.{t}"
        for p in ("q", "k", "v", "out", "mem_q", "mem_k", "mem_v", "mem_out")
        for t in ("weight", "bias")
    ] + [
        f"{n}.{t}"
        for n in (
            "self_attn_layer_norm",
            "fc1",
            "fc2",
            "final_layer_norm",
            "mem_self_attn_layer_norm",
            "mem_fc1",
            "mem_fc2",
            "mem_final_layer_norm",
        )
        for t in ("weight", "bias")
    ]
    encoder = {f"model.encoder.layers.{i}.{n}" for i in range(2) for n in per_layer} | {
        "model.encoder.embed_tokens.weight",
        "model.encoder.embed_positions.weight",
        "model.encoder.layernorm_embedding.weight",
        "model.encoder.layernorm_embedding.bias",
        "model.encoder.memory_layer_norm.weight",
        "model.encoder.memory_layer_norm.bias",
        "model.encoder.memory_bias",
        "model.encoder.memory_gate_net.dense.weight",
        "model.encoder.memory_gate_net.dense.bias",
        "model.encoder.memory_gate_net.dense2.weight",
        "model.encoder.memory_gate_net.dense2.bias",
    }
    assert {n for n in names if n.startswith("model.encoder.")} == encoder
    # the decoder and heads are BART's, name for name
    bart = BartForConditionalGeneration(BartConfig(**{k: v for k, v in TINY.items() if k != "memory_len"}))
    bart_names = {n for n in bart.state_dict() if not n.startswith("model.encoder.")}
    assert {n for n in names if not n.startswith("model.encoder.")} == bart_names
    assert tiny_model().model.encoder.memory_bias.shape == (1, TINY["memory_len"], TINY["d_model"])


def test_auto_classes(tmp_path):
    config = AutoConfig.for_model("membart", **TINY)
    assert isinstance(config, MemBartConfig)
    assert isinstance(AutoModel.from_config(config), MemBartModel)
    tiny_model().save_pretrained(tmp_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert isinstance(model, MemBartForConditionalGeneration)


def test_from_bart_copies_every_weight_and_initialises_memory_twins(tmp_path):
    torch.manual_seed(0)
    bart_cfg = BartConfig(**{k: v for k, v in TINY.items() if k != "memory_len"})
    BartForConditionalGeneration(bart_cfg).save_pretrained(tmp_path)
    bart = BartForConditionalGeneration.from_pretrained(tmp_path)
    membart = MemBartForConditionalGeneration.from_bart(str(tmp_path), memory_len=7)
    assert membart.config.memory_len == 7 and membart.config.model_type == "membart"
    bart_state, mem_state = bart.state_dict(), membart.state_dict()
    for key, value in bart_state.items():
        assert torch.equal(mem_state[key], value), key
    for layer in range(TINY["encoder_layers"]):
        p = f"model.encoder.layers.{layer}."
        for mem_name, name in [
            ("self_attn.mem_q_proj", "self_attn.q_proj"),
            ("self_attn.mem_out_proj", "self_attn.out_proj"),
            ("mem_fc1", "fc1"),
            ("mem_fc2", "fc2"),
            ("mem_final_layer_norm", "final_layer_norm"),
            ("mem_self_attn_layer_norm", "self_attn_layer_norm"),
            ("self_attn.mem_k_proj", "self_attn.k_proj"),
            ("self_attn.mem_v_proj", "self_attn.v_proj"),
        ]:
            assert torch.equal(mem_state[f"{p}{mem_name}.weight"], bart_state[f"{p}{name}.weight"])
    new_keys = set(mem_state) - set(bart_state)
    assert all(k.startswith("model.encoder.memory_") or ".mem_" in k for k in new_keys)
    assert mem_state["model.encoder.memory_bias"].std() > 0
    # with no memory slots attended (a far-away memory cannot be isolated), MemBART still decodes like a model
    ids = random_ids(1, 8, 14)
    with torch.no_grad():
        assert torch.isfinite(membart.eval()(input_ids=ids).logits).all()


def test_seed_readme_usage_generate_with_memory(tmp_path):
    """The seed README's usage, verbatim but for the local checkpoint path (and a tokenizer-free input)."""
    tiny_model().save_pretrained(tmp_path)
    membart = MemBartForConditionalGeneration.from_pretrained(str(tmp_path))
    memory_states = membart.construct_memory(batch_size=1)
    input_ids1 = random_ids(1, 10, 15)
    encoder_outputs = membart.model.encoder(input_ids=input_ids1, memory_states=memory_states, attention_mask=None)
    memory_states = encoder_outputs.memory_states
    input_ids2 = random_ids(1, 10, 16)
    encoder_outputs2 = membart.model.encoder(input_ids=input_ids2, memory_states=memory_states, attention_mask=None)
    outputs = membart.generate(
        encoder_outputs=encoder_outputs2,
        decoder_start_token_id=0,
        max_length=12,
        num_beams=1,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
    )
    assert outputs.sequences.shape[0] == 1 and outputs.sequences[0, 0] == 0
    # the memory changes what is generated: the same segment with a fresh memory scores differently
    fresh = membart.model.encoder(input_ids=input_ids2, memory_states=membart.construct_memory(1))
    fresh_out = membart.generate(
        encoder_outputs=fresh,
        decoder_start_token_id=0,
        max_length=12,
        num_beams=1,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
    )
    assert (outputs.scores[0] - fresh_out.scores[0]).abs().max() > 1e-4


@torch.no_grad()
def test_generate_takes_the_padding_mask_from_encoder_outputs():
    model = tiny_model()
    ids = random_ids(1, 7, 17)
    padded = torch.cat([ids, torch.full((1, 5), 1)], 1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], 1)
    kwargs = dict(
        decoder_start_token_id=0,
        max_length=8,
        num_beams=2,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
    )
    a = model.generate(encoder_outputs=model.model.encoder(input_ids=ids), **kwargs)
    b = model.generate(encoder_outputs=model.model.encoder(input_ids=padded, attention_mask=mask), **kwargs)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.scores[0], b.scores[0], atol=1e-5, rtol=0)


def test_bf16_forward_and_backward():
    model = tiny_model().to(torch.bfloat16).train()
    ids = random_ids(2, 8, 18)
    out = model(input_ids=ids, memory_states=model.construct_memory(2), labels=ids)
    assert out.logits.dtype == torch.bfloat16 and out.memory_states.dtype == torch.bfloat16
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, labels = random_ids(2, 8, 19), random_ids(2, 6, 20)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.model.encoder.layers)
        memory = torch.randn(2, TINY["memory_len"], TINY["d_model"], generator=torch.Generator().manual_seed(0))
        model(input_ids=ids, memory_states=memory, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_presets():
    base, large = load_preset("membart-base"), load_preset("membart-large")
    assert (
        base.d_model,
        base.encoder_layers,
        base.decoder_layers,
        base.encoder_attention_heads,
        base.encoder_ffn_dim,
        base.memory_len,
        base.vocab_size,
    ) == (768, 6, 6, 12, 3072, 64, 50265)
    assert (
        large.d_model,
        large.encoder_layers,
        large.encoder_attention_heads,
        large.encoder_ffn_dim,
        large.memory_len,
    ) == (1024, 12, 16, 4096, 128)
    assert load_preset("tiny", vocab_size=500).vocab_size == 500
    with pytest.raises(ValueError, match="unknown MemBART preset 'huge'.*membart-base"):
        load_preset("huge")
    with pytest.raises(Exception, match="memory_len"):
        MemBartConfig(memory_len=0)
    tiny = load_preset("tiny")
    assert math.isclose(MemBartModel(tiny).encoder.memory_bias.std().item(), tiny.init_std, rel_tol=0.3)
