"""Write a tiny DeepSpeed checkpoint in the trainer's layout (memformers.training.checkpoint), without the data
pipeline: a byte-level BPE tokenizer in SHARD_DIR/tokenizer, a tiny MemBART, one optimizer step, then the real
`Checkpointer.save` (DeepSpeed files + trainer_state.json + model_config.json + rank-*.pt).

    torchrun --nproc_per_node 2 tests/scripts/make_ds_checkpoint.py RUN_DIR SHARD_DIR DS_CONFIG [STEPS]

Used to develop and test the exporter where a real training run is not wanted (e.g. a ZeRO stage or precision the
trainer's tests do not cover); the export tests of record use `pretrain/train.py` itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from memformers.models.membart import MemBartForConditionalGeneration, load_preset
from memformers.training.checkpoint import Checkpointer
from memformers.training.distributed import barrier, init_runtime, rng_state, seed_everything

TEXT = ["the cat sat on the mat .", "memory carries facts across segments !", "a tiny tokenizer for tests ?"] * 20


def make_tokenizer(out_dir: Path):
    """A fast byte-level BPE tokenizer with BART's special tokens at BART's ids (<s>=0 <pad>=1 </s>=2 <unk>=3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", mask_token="<mask>")
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def main(run_dir: str, shard_dir: str, ds_config: str, steps: int = 1) -> None:
    runtime = init_runtime()
    seed_everything(0)
    run_dir, shard_dir = Path(run_dir), Path(shard_dir)
    if runtime.is_main:
        make_tokenizer(shard_dir / "tokenizer")
    barrier()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(shard_dir / "tokenizer")
    config = load_preset("tiny", vocab_size=8 * -(-len(tokenizer) // 8), pad_token_id=1, bos_token_id=0,
                         eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2, memory_len=4)
    model = MemBartForConditionalGeneration(config)

    import deepspeed

    ds = {**json.loads(Path(ds_config).read_text()), "train_micro_batch_size_per_gpu": 2,
          "gradient_accumulation_steps": 1, "gradient_clipping": 1.0, "steps_per_print": 10**9,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    g = torch.Generator().manual_seed(runtime.rank)
    memory = engine.module.construct_memory(2)
    for _ in range(steps):
        ids = torch.randint(5, len(tokenizer), (2, 12), generator=g)
        out = engine(input_ids=ids, memory_states=memory.to(engine.module.dtype), labels=ids)
        engine.backward(out.loss)
        engine.step()
        memory = out.memory_states.detach()
    trainer_state = {"step": steps, "tokens": 48 * steps, "wandb_id": None,
                     "last_eval": {"step": steps, "eval_loss": 5.5, "eval_loss_no_memory": 5.75, "memory_gain": 0.25},
                     "config": {"run_dir": str(run_dir), "deepspeed": ds_config, "data": {"path": str(shard_dir)},
                                "model": {"preset": "tiny"}, "train": {"max_steps": steps}}}
    Checkpointer(run_dir / "checkpoints", keep=2, runtime=runtime).save(
        engine, steps, rank_state={"memory": memory.cpu(), "rng": rng_state()}, trainer_state=trainer_state,
        model_config_json=engine.module.config.to_json_string())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 1)
