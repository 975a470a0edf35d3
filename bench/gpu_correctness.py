"""The correctness half of `make gpu-check` (bench/gpu_check.py): the model on the device against the CPU in fp32,
bf16 against fp32, memory resets, `generate` with memory, and which fused attention kernels the encoder and the
decoder run on. Each check returns {name, value, tolerance, passed, detail}; tolerances are stated with the check.

On the CPU (`--dry-run`) the same code compares the CPU with itself: it proves the code runs, not the numbers.
"""

from __future__ import annotations

import copy

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from memformers.models.membart import MemBartForConditionalGeneration, load_preset
from memformers.training.recurrence import loss_weights, run_rollout, segment_forward

PAD, BOS, EOS, START = 1, 0, 2, 2
FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]

# fp32 on the device vs fp32 on the CPU: the same math in another summation order (TF32 off)
TOL_FP32_LOSS, TOL_FP32_GRAD = 1e-5, 1e-3
# bf16 keeps 8 significant bits (a rounding error up to 0.4%); over the layers the loss agrees to a few 0.1%
TOL_BF16_LOSS = 1e-2
# the decoder's cache path (generate) vs one teacher-forced forward: same math, other kernels and shapes
TOL_GENERATE_LOGITS = 1e-3


def check(name: str, value: float, tolerance: float, detail: dict | None = None, *, below: bool = True) -> dict:
    """A check's record: `value` must be <= `tolerance` (`below`), or > it."""
    passed = bool(value <= tolerance) if below else bool(value > tolerance)
    bound = "<=" if below else ">"
    return {"name": name, "value": value, "bound": bound, "tolerance": tolerance, "passed": passed,
            "detail": detail or {}}  # fmt: skip


def segments(count: int, lanes: int, length: int, vocab: int, seed: int = 0) -> list[dict]:
    """Noised-looking segment batches with padding in the last lane and a reset of lane 0 at segment 2."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(count):
        ids = torch.randint(4, vocab, (lanes, length), generator=g)
        ids[:, 0] = BOS
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[-1, length * 3 // 4 :] = False
        ids[~mask] = PAD
        resets = torch.zeros(lanes, dtype=torch.bool)
        resets[0] = t in (0, 2)
        labels = ids.masked_fill(~mask, -100)
        out.append({"source_ids": ids, "source_mask": mask, "labels": labels, "resets": resets | (t == 0)})
    return out


def on(batches: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device) for k, v in b.items()} for b in batches]


def rollout_loss_and_grads(model, batches: list[dict], device: torch.device) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    memory = model.construct_memory(batches[0]["source_ids"].shape[0]).to(device)
    result = run_rollout(
        model, on(batches, device), memory, loss_weights(len(batches), "uniform"), replay=False, pad_id=PAD,
        decoder_start_id=START,
    )  # fmt: skip
    result.loss.backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return float(result.loss), grads


def device_vs_cpu(preset: str, device: torch.device, length: int) -> list[dict]:
    """Loss and gradients of a 3-segment rollout (memory carried, a reset, padding) on the device vs the CPU, fp32;
    then the device in bf16 vs fp32. TF32 is off for it (and put back after: the throughput runs measure the
    training path's own settings)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        return _device_vs_cpu(preset, device, length)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _device_vs_cpu(preset: str, device: torch.device, length: int) -> list[dict]:
    torch.manual_seed(0)
    cpu_model = MemBartForConditionalGeneration(load_preset(preset, dropout=0.0)).train()
    batches = segments(3, lanes=2, length=length, vocab=cpu_model.config.vocab_size)
    cpu_loss, cpu_grads = rollout_loss_and_grads(cpu_model, batches, torch.device("cpu"))
    model = copy.deepcopy(cpu_model).to(device)
    loss, grads = rollout_loss_and_grads(model, batches, device)
    grad_error = max((grads[n] - g).norm().item() / max(g.norm().item(), 1e-12) for n, g in cpu_grads.items())
    model = model.to(torch.bfloat16)
    bf16_loss, _ = rollout_loss_and_grads(model, batches, device)
    return [
        check(f"{device.type} vs CPU fp32: loss, relative", abs(loss - cpu_loss) / cpu_loss, TOL_FP32_LOSS,
              {"loss": loss, "cpu_loss": cpu_loss}),
        check(f"{device.type} vs CPU fp32: gradients, worst relative L2 over parameters", grad_error, TOL_FP32_GRAD,
              {"parameters": len(cpu_grads)}),
        check("bf16 vs fp32 on the device: loss, relative", abs(bf16_loss - loss) / loss, TOL_BF16_LOSS,
              {"bf16_loss": bf16_loss, "fp32_loss": loss}),
    ]  # fmt: skip


@torch.no_grad()
def memory_resets_and_generate(preset: str, device: torch.device, length: int) -> list[dict]:
    """A reset lane computes what a fresh memory computes, a carried one does not; `generate` with memory gives
    the logits of a teacher-forced forward on its own output, and other logits than with the memory reset."""
    torch.manual_seed(1)
    model = MemBartForConditionalGeneration(load_preset(preset, dropout=0.0)).to(device).eval()
    first, second = on(segments(2, lanes=2, length=length, vocab=model.config.vocab_size, seed=1), device)
    memory = model.construct_memory(2)
    _, _, memory = segment_forward(model, first, memory, pad_id=PAD, decoder_start_id=START)
    reset_lane0 = torch.tensor([True, False], device=device)
    _, _, carried = segment_forward(model, second, memory, pad_id=PAD, decoder_start_id=START, resets=reset_lane0)
    _, _, fresh = segment_forward(
        model, second, model.construct_memory(2), pad_id=PAD, decoder_start_id=START, resets=reset_lane0
    )
    reset_error = (carried[0] - fresh[0]).abs().max().item()
    carried_change = (carried[1] - fresh[1]).abs().max().item()

    encoder = model.get_encoder()
    with_memory = encoder(input_ids=second["source_ids"], memory_states=memory, attention_mask=second["source_mask"])
    reset = encoder(
        input_ids=second["source_ids"], memory_states=memory, memory_resets=torch.ones(2, dtype=torch.bool,
        device=device), attention_mask=second["source_mask"],
    )  # fmt: skip
    out = model.generate(
        encoder_outputs=with_memory, decoder_start_token_id=START, max_new_tokens=12, min_new_tokens=12,
        num_beams=1, do_sample=False, output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    generated = torch.stack(out.logits, dim=1).float()  # [lanes, steps, vocab]
    forced = model(encoder_outputs=with_memory, decoder_input_ids=out.sequences[:, :-1]).logits.float()
    generate_error = (generated - forced).abs().max().item()
    forced_reset = model(encoder_outputs=reset, decoder_input_ids=out.sequences[:, :-1]).logits.float()
    memory_effect = (forced_reset - forced).abs().max().item()
    return [
        check("reset lane == fresh memory (max abs)", reset_error, 1e-5),
        check("carried lane != fresh memory (max abs)", carried_change, 1e-3, below=False),
        check("generate with memory: logits vs teacher-forced forward (max abs)", generate_error, TOL_GENERATE_LOGITS,
              {"new_tokens": len(out.logits)}),
        check("generate: memory changes the logits (max abs, carried vs reset)", memory_effect, 1e-3, below=False),
    ]  # fmt: skip


def attention_kernels(preset: str, device: torch.device, length: int) -> list[dict]:
    """Which SDPA backends the encoder (one fused attention over [memory ; tokens] with an explicit mask) and the
    decoder (causal self-attention, cross-attention over [memory ; tokens]) can run on, each alone with one backend
    allowed; then forward and backward of the whole model with only the fused backends allowed (no math fallback),
    and the SDPA operations the profiler saw."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(2)
    model = MemBartForConditionalGeneration(load_preset(preset, dropout=0.0)).to(device, dtype).train()
    batch = on(segments(1, lanes=2, length=length, vocab=model.config.vocab_size, seed=2), device)[0]
    memory = model.construct_memory(2)
    runs = {}
    for name, backends in (("flash", [SDPBackend.FLASH_ATTENTION]), ("efficient", [SDPBackend.EFFICIENT_ATTENTION])):
        for part, call in (("encoder", lambda: _encoder(model, batch, memory)), ("decoder", lambda: _decoder(model))):
            runs[f"{part} on {name} only"] = _runs(call, backends)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof, sdpa_kernel(FUSED):
        loss, _, _ = segment_forward(model, batch, memory, pad_id=PAD, decoder_start_id=START)
        loss.sum().backward()
    ops = {e.key: e.count for e in prof.key_averages() if "scaled_dot_product" in e.key and e.key.startswith("aten::_")}
    layers = model.config.encoder_layers + 2 * model.config.decoder_layers
    fused_calls = sum(count for op, count in ops.items() if "backward" not in op)
    return [
        check("forward + backward with only flash / memory-efficient SDPA allowed: SDPA calls on them", fused_calls,
              layers - 0.5, {"sdpa_ops": ops, "attention_calls_expected": layers, **runs}, below=False),
    ]  # fmt: skip


def _runs(call, backends) -> str:
    try:
        with sdpa_kernel(backends):
            call()
        return "runs"
    except RuntimeError as error:
        return "refused: " + str(error).splitlines()[0][:120]


def _encoder(model, batch, memory):
    return model.get_encoder()(input_ids=batch["source_ids"], memory_states=memory, attention_mask=batch["source_mask"])


def _decoder(model):
    """The decoder over unpadded encoder states (the memory always visible): BART's self-attention is causal
    (`is_causal`, no mask) and its cross-attention has no mask, so flash can take both."""
    lanes, length, d = 2, 32, model.config.d_model
    states = torch.randn(lanes, model.config.memory_len + length, d, device=model.device, dtype=model.dtype)
    ids = torch.full((lanes, length), 5, device=model.device)
    return model.model.decoder(input_ids=ids, encoder_hidden_states=states, use_cache=False)
