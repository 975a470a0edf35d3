"""examples/finetune_dialog: finetuning an export of a real (tiny, 3-step) pretraining run on multi-session
dialogues with memory carried from turn to turn, then generating a reply with that memory.

The export comes from tests/test_export.py's session cache (the ZeRO-2 trainer run), so the whole chain is real:
pretrain/train.py → pretrain/export_hf.py's library → this example.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from launch import REPO, cpu_env
from safetensors.torch import load_file
from test_export import exported

EXAMPLE = REPO / "examples" / "finetune_dialog"
SAMPLE = EXAMPLE / "data" / "sample_dialogs.json"
# the example's modules below are found through examples/finetune_dialog on pytest's `pythonpath`

import dialog_data  # noqa: E402
import generate  # noqa: E402
import make_sample_data  # noqa: E402
import train  # noqa: E402


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_shards):
    return exported(tmp_path_factory, tiny_shards, "zero2")


@pytest.fixture(scope="module")
def tokenizer(export_dir):
    return generate.load_model(export_dir)[1]


def fact_turns(turns: list[dict]) -> tuple[int, int]:
    """(index of the turn stating the pet's name, index of the later answer repeating it)."""
    stated = next(i for i, t in enumerate(turns) if t["text"].startswith("Yes, I have a"))
    name = turns[stated]["text"].rstrip(".").split()[-1]
    answer = next(i for i, t in enumerate(turns) if i > stated and t["session"] == 2 and name in t["text"])
    return stated, answer


def train_args(export_dir, output, *extra: str):
    return train.parse_args(
        [
            "--model",
            str(export_dir),
            "--data",
            str(SAMPLE),
            "--output",
            str(output),
            "--lanes",
            "2",
            "--time-horizon",
            "2",
            "--warmup",
            "1",
            *extra,
        ]
    )


# ------------------------------------------------------------------------------------------------------- data


def test_sample_file_is_reproducible_and_needs_memory(tmp_path):
    make_sample_data.main(["--output", str(tmp_path / "s.json")])
    assert (tmp_path / "s.json").read_bytes() == SAMPLE.read_bytes(), "regenerate it with make_sample_data.py"
    dialogues = dialog_data.load_dialogues(SAMPLE)
    assert len(dialogues) >= 8
    for dial_id, turns in dialogues.items():
        assert all(t["dial_id"] == dial_id and set(dialog_data.TURN_KEYS) <= set(t) for t in turns)
        assert {t["session"] for t in turns} == {1, 2}
        stated, answer = fact_turns(turns)
        assert turns[stated]["session"] == 1 and answer - stated >= 8  # far outside a 1-2 turn context window


def test_bad_dialogue_files_say_where(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "d1": [
                    {"dial_id": "d1", "turn_id": 0, "text": "hi", "role": "A", "session": 1},
                    {"dial_id": "d1", "turn_id": 1, "role": "B", "session": 1},
                ]
            }
        )
    )
    with pytest.raises(dialog_data.DialogDataError, match=r"dialogue 'd1', turn #1: missing key\(s\) text"):
        dialog_data.load_dialogues(bad)
    bad.write_text("{not json")
    with pytest.raises(dialog_data.DialogDataError, match="invalid JSON at line 1"):
        dialog_data.load_dialogues(bad)
    with pytest.raises(dialog_data.DialogDataError, match="does not exist"):
        dialog_data.load_dialogues(tmp_path / "missing.json")


@pytest.mark.distributed
@pytest.mark.slow
def test_turn_streams_one_dialogue_per_lane_reset_at_start_then_padding(tokenizer):
    dialogues = list(dialog_data.load_dialogues(SAMPLE).values())[:3]
    examples = [
        dialog_data.dialogue_examples(d, tokenizer, context_turns=1, max_source_len=64, max_target_len=32)
        for d in dialogues
    ]
    streams = dialog_data.TurnStreams(
        examples,
        2,
        pad_id=tokenizer.pad_token_id,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        seed=3,
        epochs=1,
    )
    lanes = [[], []]
    for batch in streams:
        for lane in range(2):
            if batch["valid"][lane]:
                lanes[lane].append(
                    (batch["dial_ids"][lane], int(batch["turn_index"][lane]), bool(batch["resets"][lane]))
                )
            else:  # padding lane: reset, no target, `<s></s>` source
                assert batch["resets"][lane] and (batch["labels"][lane] == -100).all()
                assert batch["attention_mask"][lane].sum() == 2
    seen = {}
    for lane in lanes:
        for dial_id, index, reset in lane:
            assert reset == (index == 1)  # memory reset exactly where a dialogue starts
            seen.setdefault(dial_id, []).append(index)
    # every dialogue once, whole, in order, on one lane
    assert seen == {d[0]["dial_id"]: list(range(1, len(d))) for d in dialogues}
    # sources are the previous turn plus the replying speaker's prompt; labels are the reply
    first = examples[0][1]  # example k=2: the reply of turn 2 to turn 1
    assert tokenizer.decode(first.source_ids, skip_special_tokens=True).endswith(
        f"{dialogues[0][1]['role']}: {dialogues[0][1]['text']}\n{dialogues[0][2]['role']}:"
    )
    assert tokenizer.decode(first.labels, skip_special_tokens=True) == dialogues[0][2]["text"]
    # epochs=None never runs dry and never pads
    endless = iter(dialog_data.TurnStreams(examples, 2, pad_id=1, bos_id=0, eos_id=2, epochs=None))
    assert all(next(endless)["valid"].all() for _ in range(3 * sum(map(len, examples))))


# --------------------------------------------------------------------------------------------------- training


@pytest.mark.distributed
@pytest.mark.slow
def test_loss_decreases_on_a_fixed_batch(export_dir, tmp_path):
    torch.manual_seed(0)
    model, tokenizer = generate.load_model(export_dir)
    args = train_args(export_dir, tmp_path, "--lr", "1e-3")
    rollout = list(zip(range(2), train.build_streams(args, tokenizer, model.config, 0, 1, epochs=1)))
    fixed = [batch for _, batch in rollout]
    engine, losses = train.TorchEngine(model.train(), args), []
    for _ in range(6):
        result = train.run_rollout(
            engine,
            fixed,
            model.construct_memory(2),
            pad_id=model.config.pad_token_id,
            start_id=model.config.decoder_start_token_id,
        )
        engine.backward(result.loss)
        engine.step()
        losses.append(result.loss.item())
    assert losses[-1] < 0.8 * losses[0] and losses[-1] < min(losses[:3]), losses


@pytest.mark.distributed
@pytest.mark.slow
def test_generation_encodes_a_dialogue_exactly_as_training_does(export_dir, tokenizer):
    model = generate.load_model(export_dir)[0].eval()
    turns = next(iter(dialog_data.load_dialogues(SAMPLE).values()))
    examples = [dialog_data.dialogue_examples(turns, tokenizer, context_turns=2, max_source_len=64, max_target_len=32)]
    stream = dialog_data.TurnStreams(examples, 1, pad_id=1, bos_id=0, eos_id=2, epochs=1)
    memory, memories = model.construct_memory(1), []
    with torch.no_grad():
        for batch in stream:
            memory = model.get_encoder()(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                memory_states=memory,
                memory_resets=batch["resets"],
            ).memory_states
            memories.append(memory)
    k = fact_turns(turns)[1]  # reply to turns[:k]: training's example k
    encoded = generate.encode_dialogue(
        model, tokenizer, turns[:k], turns[k]["role"], context_turns=2, max_source_len=64
    )
    torch.testing.assert_close(encoded.memory_states, memories[k - 1], atol=1e-6, rtol=0)


@pytest.mark.distributed
@pytest.mark.slow
def test_finetune_with_torch_then_reply_with_memory(export_dir, tmp_path, capsys):
    output = tmp_path / "finetuned"
    assert (
        train.main(
            [
                "--model",
                str(export_dir),
                "--data",
                str(SAMPLE),
                "--output",
                str(output),
                "--steps",
                "3",
                "--lanes",
                "2",
                "--time-horizon",
                "2",
                "--lr",
                "1e-3",
                "--log-every",
                "1",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in records)
    assert "step 3/3: loss" in capsys.readouterr().out
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "membart" and "AutoModelForSeq2SeqLM" in config["auto_map"]
    assert (output / "modeling_membart.py").is_file() and (output / "tokenizer.json").is_file()
    assert json.loads((output / generate.SETTINGS_FILE).read_text())["context_turns"] == 1
    before, after = load_file(export_dir / "model.safetensors"), load_file(output / "model.safetensors")
    assert max((before[k] - after[k]).abs().max().item() for k in before) > 0  # it trained

    model, tokenizer = generate.load_model(output)
    model.eval()
    turns = next(iter(dialog_data.load_dialogues(SAMPLE).values()))
    k = fact_turns(turns)[1]
    history, role = turns[:k], turns[k]["role"]
    reply = generate.generate_reply(model, tokenizer, history, max_new_tokens=12, **generate.dialog_settings(output))
    assert isinstance(reply, str)

    # the memory matters: the same last example from a reset memory scores the reference reply differently
    with_memory = generate.encode_dialogue(model, tokenizer, history, role, use_memory=True)
    without = generate.encode_dialogue(model, tokenizer, history, role, use_memory=False)
    assert (with_memory.memory_states - without.memory_states).abs().max() > 1e-3
    labels = torch.tensor([dialog_data.encode_target(tokenizer, turns[k]["text"], 32)])
    decoder_input_ids = train.decoder_inputs(labels, model.config.pad_token_id, model.config.decoder_start_token_id)
    with torch.no_grad():
        logits = [model(encoder_outputs=e, decoder_input_ids=decoder_input_ids).logits for e in (with_memory, without)]
    assert (logits[0] - logits[1]).abs().max() > 1e-4
    kwargs = dict(max_length=6, do_sample=False, return_dict_in_generate=True, output_scores=True)
    scores = [model.generate(encoder_outputs=e, **kwargs).scores[0] for e in (with_memory, without)]
    assert (scores[0] - scores[1]).abs().max() > 1e-4


@pytest.mark.distributed
@pytest.mark.slow
def test_finetune_with_deepspeed_where_memformers_is_not_installed(export_dir, tmp_path):
    """One process, ZeRO-2, then the --sample replies; `memformers` shadowed by a package that raises, so the
    example runs on transformers + the export's own code only."""
    shadow = tmp_path / "shadow" / "memformers"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('memformers is not installed here')\n")
    env = cpu_env(PYTHONPATH=str(tmp_path / "shadow"), HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    output = tmp_path / "ds"
    command = [
        sys.executable,
        str(EXAMPLE / "train.py"),
        "--model",
        str(export_dir),
        "--data",
        str(SAMPLE),
        "--output",
        str(output),
        "--steps",
        "2",
        "--lanes",
        "2",
        "--time-horizon",
        "2",
        "--engine",
        "deepspeed",
        "--zero-stage",
        "2",
        "--sample",
    ]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "step 2/2: loss" in proc.stdout and "with memory:" in proc.stdout and "memory reset:" in proc.stdout
    assert len((output / "metrics.jsonl").read_text().splitlines()) == 2
    assert load_file(output / "model.safetensors").keys() == load_file(export_dir / "model.safetensors").keys()
    assert os.listdir(tmp_path / "hf_modules")  # the model's code came from the export directory
