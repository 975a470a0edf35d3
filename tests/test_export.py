"""Export of pretraining checkpoints to Hugging Face directories (memformers/export.py, pretrain/export_hf.py).

The checkpoints come from the real trainer (pretrain/train.py, 2 processes, tiny preset, 3 steps) under ZeRO-0, 2
and 3, trained concurrently once per session. The checks: the export reproduces the training model's logits over
two memory-carrying segments, its weights are the fp32 masters, bf16 exports are bf16, it loads and generates with
memory where `memformers` cannot be imported, and bad inputs fail with clear messages.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_args
from launch import REPO, cpu_env, torchrun_cmd
from safetensors.torch import load_file

from memformers.export import ExportError, VerificationError, export_checkpoint
from memformers.models.membart import MemBartConfig, MemBartForConditionalGeneration

# every test uses `runs`: 3-step pretraining runs under 2-rank torchrun, one per ZeRO stage
pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TOLERANCE = 1e-5
STAGES = ("zero0", "zero2", "zero3")
TEXTS = [
    ["In the harbor, the guards sang suddenly.", "The code of Vagri is ochre. Lena said so twice."],
    ["Victor said that the farmer had sang again.", "What was the code of Vagri?"],
]

# ------------------------------------------------------------------------------------------- shared, per session
# Plain functions with a cache (not fixtures) so tests/test_finetune_dialog.py can reuse the same runs and exports.
_CACHE: dict[str, Path] = {}


def trained_runs(tmp_path_factory, shards: Path, stages=STAGES) -> dict[str, Path]:
    """RUN_DIRs of 3-step tiny runs of pretrain/train.py under 2-process torchrun, one per ZeRO stage; the runs
    not made yet in this session are started together (each rank is mostly waiting on the other)."""
    todo = [stage for stage in stages if f"run-{stage}" not in _CACHE]
    procs = {}
    for stage in todo:
        run_dir = tmp_path_factory.mktemp(f"run-{stage}")
        args = tiny_run_args(
            run_dir,
            shards,
            "train.max_steps=3",
            "checkpoint.every_steps=3",
            "eval.max_batches=2",
            f"deepspeed=ds_configs/{stage}.json",
        )
        procs[stage] = (
            run_dir,
            subprocess.Popen(
                torchrun_cmd("pretrain/train.py", args),
                cwd=REPO,
                env=cpu_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
    for stage, (run_dir, proc) in procs.items():
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"training with {stage} exited {proc.returncode}:\n{output[-6000:]}"
        _CACHE[f"run-{stage}"] = run_dir
    return {stage: _CACHE[f"run-{stage}"] for stage in stages}


def exported(tmp_path_factory, shards: Path, stage: str = "zero2") -> Path:
    """The fp32 export of the `stage` run (made once per session; treat it as read-only)."""
    key = f"export-{stage}"
    if key not in _CACHE:
        run_dir = trained_runs(tmp_path_factory, shards, (stage,))[stage]
        out = tmp_path_factory.mktemp(key) / "model"
        report = export_checkpoint(run_dir, out)
        assert report.passed and report.max_abs_diff <= TOLERANCE, report.summary()
        _CACHE[key] = out
    return _CACHE[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_shards) -> dict[str, Path]:
    return trained_runs(tmp_path_factory, tiny_shards)


def tag_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


def fp32_masters(run_dir: Path) -> dict[str, torch.Tensor]:
    """The fp32 master weights, read independently of the exporter (stage 0 has no DeepSpeed utility for it)."""
    tag = tag_dir(run_dir)
    if any(tag.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(tag.parent), tag=tag.name)
    states = torch.load(tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    # ZeRO-0 with bf16: the masters are the optimizer's unnamed fp32 groups, in the trainer's parameter groups
    from memformers.training.engine import parameter_groups

    model = MemBartForConditionalGeneration(MemBartConfig.from_json_file(tag / "model_config.json"))
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in parameter_groups(model, 0.0) for p in group["params"]]
    masters = dict(zip(order, [t for group in states["optimizer"]["fp32_groups"] for t in group], strict=True))
    for name, master in masters.items():  # the naming is right: each master rounds to the bf16 weight trained
        assert torch.equal(master.to(torch.bfloat16).float(), states["module"][name].float()), name
    return masters


def training_model(run_dir: Path) -> MemBartForConditionalGeneration:
    """The in-package class holding the masters: what the training model computes, in fp32."""
    model = MemBartForConditionalGeneration(MemBartConfig.from_json_file(tag_dir(run_dir) / "model_config.json"))
    missing, unexpected = model.load_state_dict(fp32_masters(run_dir), strict=False)
    assert not unexpected and set(missing) <= {
        "lm_head.weight",
        "model.encoder.embed_tokens.weight",
        "model.decoder.embed_tokens.weight",
        "final_logits_bias",
    }
    return model.eval()


def text_segments(tokenizer) -> list[dict]:
    """Two lanes, two segments of real text (lane lengths differ: padding), memory carried into segment 2."""
    segments = []
    for index in range(2):
        enc = tokenizer([lane[index] for lane in TEXTS], return_tensors="pt", padding=True)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        segments.append(
            {
                "input_ids": enc.input_ids,
                "attention_mask": enc.attention_mask.bool(),
                "labels": labels,
                "memory_resets": torch.tensor([index == 0] * 2),
            }
        )
    return segments


@torch.no_grad()
def outputs(model, segments: list[dict]) -> list[torch.Tensor]:
    memory, out = None, []
    for segment in segments:
        result = model(**segment, memory_states=memory)
        memory = result.memory_states
        out += [result.logits, memory]
    return out


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("stage", STAGES)
def test_export_reproduces_the_training_model(runs, stage, tmp_path):
    from transformers import AutoTokenizer

    from memformers.export import load_remote_code_model

    out = tmp_path / "export"
    report = export_checkpoint(runs[stage], out)
    assert report.passed and report.max_abs_diff <= TOLERANCE
    assert report.zero_stage == int(stage[-1]) and report.step == 3 and report.tag == "step-00000003"

    # independently of the exporter's own check: the export's code and weights vs the in-package class holding the
    # masters (in this process the Auto classes would pick the registered package class; the isolated test below
    # covers the Auto path)
    model = load_remote_code_model(out)
    assert type(model).__module__.startswith("transformers_modules.")
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    segments = text_segments(tokenizer)
    reference = outputs(training_model(runs[stage]), segments)
    assert max_diff(outputs(model, segments), reference) <= TOLERANCE
    # and the memory is really carried: segment 2 computed from a reset memory differs
    reset = [dict(segments[1], memory_resets=torch.tensor([True, True]))]
    assert max_diff(outputs(model, reset)[:1], reference[2:3]) > 1e-4

    # the weights are the fp32 masters, bit for bit
    saved, masters = load_file(out / "model.safetensors"), fp32_masters(runs[stage])
    assert {str(t.dtype) for t in saved.values()} == {"torch.float32"}
    for name, master in masters.items():
        if name in saved:
            assert torch.equal(saved[name], master.float()), name
    tied = {"lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}
    assert set(masters) - set(saved) <= tied and "model.shared.weight" in saved
    for name in tied & set(masters):  # aliases of the shared embedding in the masters: the same values
        assert torch.equal(masters[name].float(), saved["model.shared.weight"]), name


def test_export_directory_contents(tmp_path_factory, tiny_shards, runs):
    out = exported(tmp_path_factory, tiny_shards, "zero2")
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "configuration_membart.py",
        "modeling_membart.py",
        "generation_config.json",
        "README.md",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "membart" and config["architectures"] == ["MemBartForConditionalGeneration"]
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_membart.MemBartForConditionalGeneration"
    assert config["auto_map"]["AutoConfig"] == "configuration_membart.MemBartConfig"
    generation = json.loads((out / "generation_config.json").read_text())
    for key in ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert generation[key] == config[key], key
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    assert generation["max_length"] == manifest["segment_length"] + 2

    state = json.loads((tag_dir(runs["zero2"]) / "trainer_state.json").read_text())
    card = (out / "README.md").read_text()
    assert "| optimizer steps | 3 |" in card and f"| training tokens | {state['tokens']:,} |" in card
    for key in ("eval_loss", "eval_loss_no_memory", "memory_gain"):
        assert f"| {key} | {state['last_eval'][key]:.4f} |" in card, key
    assert "deepspeed: ds_configs/zero2.json" in card and "trust_remote_code=True" in card
    for text in (card, (out / "pretraining.json").read_text()):  # no path of the machine that exported it
        assert str(tiny_shards) not in text and str(runs["zero2"]) not in text and f"path: {tiny_shards.name}" in card


def test_bf16_export(runs, tmp_path):
    out = tmp_path / "bf16"
    report = export_checkpoint(runs["zero3"], out, dtype="bf16")
    assert report.passed and report.dtype == "bf16"
    assert report.rounding_max_abs_diff is not None and report.rounding_max_abs_diff > 0
    saved, masters = load_file(out / "model.safetensors"), fp32_masters(runs["zero3"])
    assert {str(t.dtype) for t in saved.values()} == {"torch.bfloat16"}
    for name, tensor in saved.items():
        assert torch.equal(tensor, masters[name].to(torch.bfloat16)), name
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


# The exported directory where `memformers` cannot be imported: a package of that name that raises comes first on
# PYTHONPATH, and cwd is elsewhere (the repo root would not matter, but nothing should rely on it).
ISOLATED = textwrap.dedent("""
    import json, sys
    import torch
    try:
        import memformers
        sys.exit("memformers is importable here; the test is not isolated")
    except ImportError:
        pass
    from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer
    path = sys.argv[1]
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    base = AutoModel.from_pretrained(path, trust_remote_code=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    texts = json.loads(sys.argv[2])
    logits, memory = [], model.construct_memory(batch_size=1)
    with torch.no_grad():
        for segment in texts:
            ids = tokenizer(segment, return_tensors="pt").input_ids
            out = model(input_ids=ids, memory_states=memory, labels=ids)
            logits.append(out.logits[0].tolist())
            encoded = model.get_encoder()(input_ids=ids, memory_states=memory)
            memory = out.memory_states
        fresh = model.get_encoder()(input_ids=ids, memory_states=model.construct_memory(1))
        kwargs = dict(max_length=12, do_sample=False, return_dict_in_generate=True, output_scores=True)
        with_memory = model.generate(encoder_outputs=encoded, **kwargs)
        without = model.generate(encoder_outputs=fresh, **kwargs)
    print(json.dumps({
        "classes": [type(x).__module__ + "." + type(x).__name__ for x in (config, base, model)],
        "modules": sorted(m for m in sys.modules if m.startswith("memformers")),
        "logits": logits, "sequence": with_memory.sequences[0].tolist(),
        "text": tokenizer.decode(with_memory.sequences[0]),
        "score_diff": (with_memory.scores[0] - without.scores[0]).abs().max().item(),
    }))
""")


def test_loads_and_generates_with_memory_without_memformers(tmp_path_factory, tiny_shards, runs, tmp_path):
    out = exported(tmp_path_factory, tiny_shards, "zero2")
    shadow = tmp_path / "shadow" / "memformers"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('memformers is not installed here')\n")
    (tmp_path / "isolated.py").write_text(ISOLATED)
    texts = [lane[0] + " " + lane[1] for lane in TEXTS]
    env = cpu_env(PYTHONPATH=str(tmp_path / "shadow"), HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "isolated.py"), str(out), json.dumps(texts)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["modules"] == []
    assert all(c.startswith("transformers_modules.") for c in result["classes"]), result["classes"]
    assert result["classes"][2].endswith("MemBartForConditionalGeneration")
    assert (tmp_path / "hf_modules").is_dir()  # the code was loaded from the export, via the module cache
    # the same logits as the training model, memory carried from text 1 into text 2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    ids = [tokenizer(text, return_tensors="pt").input_ids for text in texts]
    reference = outputs(training_model(runs["zero2"]), [{"input_ids": x, "labels": x} for x in ids])
    for index in range(2):
        assert max_diff([torch.tensor(result["logits"][index])], [reference[2 * index][0]]) <= TOLERANCE
    assert result["sequence"][0] == json.loads((out / "config.json").read_text())["decoder_start_token_id"]
    assert result["score_diff"] > 1e-4  # generation reads the memory


def export_cli():
    """pretrain/export_hf.py as a module, to call its main() in this process (a subprocess costs seconds)."""
    spec = importlib.util.spec_from_file_location("export_hf", REPO / "pretrain" / "export_hf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_exports_and_refuses_a_non_empty_output(runs, tmp_path, capsys):
    out = tmp_path / "cli"
    command = [sys.executable, "pretrain/export_hf.py", "--run-dir", str(runs["zero3"]), "--output", str(out)]
    done = subprocess.run(command, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "check PASSED" in done.stdout and "max abs diff" in done.stdout
    before = (out / "model.safetensors").read_bytes()

    assert export_cli().main(command[2:] + ["--tag", "step-00000003"]) == 2
    refused = capsys.readouterr().err
    assert "not empty" in refused and "--force" in refused
    assert (out / "model.safetensors").read_bytes() == before
    assert export_cli().main(["--run-dir", str(runs["zero3"]), "--output", str(tmp_path / "x"), "--tag", "nope"]) == 2
    assert "unknown tag 'nope'" in capsys.readouterr().err

    (out / "stale.txt").write_text("from an older export")
    report = export_checkpoint(runs["zero3"], out, force=True)
    assert report.passed and not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()


def test_clear_errors_for_bad_inputs(runs, tmp_path):
    run_dir = runs["zero2"]
    with pytest.raises(ExportError, match="does not exist"):
        export_checkpoint(tmp_path / "nowhere", tmp_path / "o1")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ExportError, match="has no checkpoints"):
        export_checkpoint(tmp_path / "empty_run", tmp_path / "o2")
    with pytest.raises(ExportError, match=r"unknown tag 'step-00000999'.*available tags are step-00000003"):
        export_checkpoint(run_dir, tmp_path / "o3", tag="step-00000999")
    with pytest.raises(ExportError, match="overlaps the run directory"):
        export_checkpoint(run_dir, run_dir / "export")
    with pytest.raises(ExportError, match="dtype must be one of"):
        export_checkpoint(run_dir, tmp_path / "o4", dtype="fp8")

    # the SHARD_DIR (with the tokenizer) moved away: an error that says what to pass instead
    moved = tmp_path / "moved_run"
    shutil.copytree(run_dir, moved)
    state_file = tag_dir(moved) / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["config"]["data"]["path"] = str(tmp_path / "gone")
    state_file.write_text(json.dumps(state))
    with pytest.raises(ExportError, match=r"tokenizer not found at .*gone.*--tokenizer"):
        export_checkpoint(moved, tmp_path / "o5")
    assert not (tmp_path / "o5").exists()


def test_a_failing_check_publishes_nothing(runs, tmp_path, monkeypatch):
    """Fault injection: a weight corrupted after it was written must fail the check, and OUT_DIR stay absent."""
    import memformers.export as export

    save = export.save_export

    def save_then_corrupt(model, tokenizer, out, *args, **kwargs):
        save(model, tokenizer, out, *args, **kwargs)
        from safetensors.torch import save_file

        weights = load_file(out / "model.safetensors")
        weights["model.decoder.layernorm_embedding.weight"] *= 2  # a wrongly saved weight
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(export, "save_export", save_then_corrupt)
    with pytest.raises(VerificationError, match="NOT published") as failure:
        export_checkpoint(runs["zero2"], tmp_path / "bad")
    assert failure.value.report.max_abs_diff > TOLERANCE
    assert not (tmp_path / "bad").exists()
    leftovers = list(tmp_path.glob(".bad.export-*"))
    assert leftovers and str(leftovers[0]) in str(failure.value)
