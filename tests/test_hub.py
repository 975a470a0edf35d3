"""Hub ids where users type them (memformers.hub): shard_documents.py --tokenizer, model.init_from and evaluate.py
--model take a folder or a Hugging Face hub id. With HF_HUB_OFFLINE=1 an id is read from the hub cache, and one that
is not there is refused with the command that downloads it. The caches are folders these tests lay out as
huggingface_hub does (data_fixtures.hub_cache); nothing reaches the network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from data_fixtures import REPO, hub_cache, offline_env

from memformers.data import load_tokenizer, read_manifest, tokenizer_sha256
from memformers.hub import is_hub_id


def test_what_looks_like_a_hub_id() -> None:
    for name in ("facebook/bart-base", "gpt2", "org/name.v2", "a-b/c_d"):
        assert is_hub_id(name), name
    for name in ("/abs/path", "./tok", "../tok", "a/b/c", "~/tok", "org/", "tok/", "a/..", ""):
        assert not is_hub_id(name), name


def test_shard_documents_reads_a_tokenizer_hub_id_from_the_cache_offline(
    tmp_path: Path, bpe_tokenizer: Path, synthetic_jsonl: Path
) -> None:
    env = offline_env(hub_cache(tmp_path, "memformers-test/bpe", bpe_tokenizer))
    script = [sys.executable, str(REPO / "data_prep" / "shard_documents.py"), "--input", str(synthetic_jsonl),
              "--segment-length", "64", "--workers", "1", "--no-progress"]  # fmt: skip
    done = subprocess.run(
        [*script, "--tokenizer", "memformers-test/bpe", "--output", str(tmp_path / "shards")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    tokenizer = read_manifest(tmp_path / "shards")["tokenizer"]
    assert tokenizer["name"] == "memformers-test/bpe"  # as the user typed it
    assert tokenizer["sha256"] == tokenizer_sha256(load_tokenizer(bpe_tokenizer))

    absent = subprocess.run(
        [*script, "--tokenizer", "memformers-test/absent", "--output", str(tmp_path / "other")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert absent.returncode == 2 and "Traceback" not in absent.stderr
    assert "memformers-test/absent is not a folder" in absent.stderr and "not in the hub cache" in absent.stderr
    assert "`hf download memformers-test/absent`" in absent.stderr and str(tmp_path / "hub") in absent.stderr
    assert not (tmp_path / "other").exists()


BUILD = """
import json, sys
from memformers.training.config import ConfigError, load_config
from memformers.training.engine import build_model
for name in sys.argv[1:]:
    cfg = load_config("pretrain/configs/tiny.yaml", ["run_dir=unused", "data.path=unused", f"model.init_from={name}"])
    try:
        model = build_model(cfg, tokenizer_size=800, special_ids={"bos": 0, "pad": 1, "eos": 2}, segment_length=48)
    except ConfigError as error:
        print(json.dumps({"error": str(error)}))
        continue
    total = float(sum(p.double().sum() for p in model.parameters()))
    print(json.dumps({"class": type(model).__name__, "memory_len": model.config.memory_len, "sum": total}))
"""


def test_init_from_takes_a_hub_id_from_the_cache_offline(tmp_path: Path) -> None:
    """A MemBART and a BART (converted, memory fresh) by hub id, read offline; one not cached is refused."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    from memformers.models.membart import MemBartForConditionalGeneration, load_preset

    torch.manual_seed(0)
    membart = MemBartForConditionalGeneration(load_preset("tiny", vocab_size=800, memory_len=5)).requires_grad_(False)
    membart.save_pretrained(tmp_path / "membart")
    dims = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2)
    bart = BartForConditionalGeneration(BartConfig(vocab_size=800, encoder_ffn_dim=64, decoder_ffn_dim=64, **dims))
    bart.save_pretrained(tmp_path / "bart")
    hub_cache(tmp_path, "memformers-test/membart", tmp_path / "membart")
    env = offline_env(hub_cache(tmp_path, "memformers-test/bart", tmp_path / "bart"))
    names = ["memformers-test/membart", "memformers-test/bart", "memformers-test/absent", str(tmp_path / "membart")]
    done = subprocess.run([sys.executable, "-c", BUILD, *names], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    by_id, converted, absent, by_folder = [json.loads(line) for line in done.stdout.splitlines()]
    expected = float(sum(p.double().sum() for p in membart.parameters()))
    assert by_id == by_folder == {"class": "MemBartForConditionalGeneration", "memory_len": 5, "sum": expected}
    assert converted["class"] == "MemBartForConditionalGeneration"
    assert converted["memory_len"] == load_preset("tiny").memory_len
    assert (
        "model.init_from=memformers-test/absent" in absent["error"]
        and "hf download memformers-test/absent" in (absent["error"])
    )


def test_evaluate_refuses_an_offline_hub_id_that_is_not_cached(tmp_path: Path) -> None:
    """(evaluate.py on an export read by hub id from the cache: tests/test_evaluate.py, with its trained runs.)"""
    done = subprocess.run(
        [sys.executable, str(REPO / "pretrain" / "evaluate.py"), "--model", "memformers-test/absent", "--data",
         str(tmp_path), "--output", str(tmp_path / "eval")],
        cwd=REPO, env=offline_env(tmp_path / "hub"), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "not in the hub cache" in done.stderr and "`hf download memformers-test/absent`" in done.stderr
    assert not (tmp_path / "eval").exists()
