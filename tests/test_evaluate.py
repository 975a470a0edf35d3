"""pretrain/evaluate.py: on a checkpoint of any ZeRO stage, and on its export, the figures of the run's own
evaluation; clear errors for a model or data that does not fit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from data_fixtures import hub_cache
from launch import cpu_env, run
from test_export import exported, trained_runs

from memformers.evaluate import EvalError, evaluate_corpora, load_eval_model

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # the runs are test_export's (2-rank torchrun)

FIGURES = ("eval_loss", "eval_loss_no_memory", "memory_gain", "eval_ppl", "eval_ppl_no_memory")


def last_eval(run_dir: Path) -> dict:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "eval_loss" in x][-1]


def assert_same_figures(result: dict, reference: dict, tolerance: float = 1e-5) -> None:
    for key in FIGURES:
        assert result[key] == pytest.approx(reference[key], abs=tolerance, rel=tolerance), key
    assert result["eval_tokens"] == reference["eval_tokens"]
    for key in ("eval_loss_by_position", "eval_loss_no_memory_by_position"):
        assert [x is None for x in result[key]] == [x is None for x in reference[key]]
        assert [x for x in result[key] if x is not None] == pytest.approx(
            [x for x in reference[key] if x is not None], abs=tolerance
        )


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_a_checkpoint_reproduces_the_training_time_evaluation(tmp_path_factory, tiny_shards, stage):
    run_dir = trained_runs(tmp_path_factory, tiny_shards, (stage,))[stage]
    model = load_eval_model(str(run_dir))
    assert model.identity["kind"] == "checkpoint" and model.identity["step"] == 3
    assert model.identity["precision"] == "bf16" and model.global_lanes == 4  # 2 ranks x 2 lanes
    result = evaluate_corpora(model, [tiny_shards])
    # exact for every ZeRO stage: the run's 2 ranks x 2 lanes are streamed as 2 batches of 2 lanes (bf16 losses
    # depend on the width a batch is padded to: 4 lanes in one batch differ by 1e-4 on the ZeRO-3 run)
    assert_same_figures(result, last_eval(run_dir))
    assert_same_figures(result["corpora"]["shards"], last_eval(run_dir))
    tag = f"{run_dir}:step-00000003"  # RUN_DIR:TAG and the checkpoint directory name the same checkpoint
    assert evaluate_corpora(load_eval_model(tag), [tiny_shards])["eval_loss"] == result["eval_loss"]
    by_dir = load_eval_model(str(run_dir / "checkpoints" / "step-00000003"))
    assert evaluate_corpora(by_dir, [tiny_shards])["eval_loss"] == result["eval_loss"]


def test_the_export_gives_the_numbers_of_its_checkpoint_through_the_command(tmp_path_factory, tiny_shards, tmp_path):
    run_dir = trained_runs(tmp_path_factory, tiny_shards, ("zero2",))["zero2"]
    export = exported(tmp_path_factory, tiny_shards, "zero2")
    out = tmp_path / "eval"
    proc = run([sys.executable, "pretrain/evaluate.py", "--model", str(export), "--data", str(tiny_shards),
                "--output", str(out)], env=cpu_env())  # fmt: skip
    assert "memory gain" in proc.stdout
    result = json.loads((out / "eval.json").read_text())
    assert result["model"]["kind"] == "export" and result["model"]["tag"] == "step-00000003"
    assert result["settings"]["lanes"] == 4 and result["settings"]["seed"] == 1234
    assert_same_figures(result, last_eval(run_dir))
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = evaluate_corpora(load_eval_model(str(run_dir)), [tiny_shards])
    assert_same_figures(result, checkpoint)


def test_an_export_read_by_hub_id_from_the_cache_gives_its_folders_numbers(tmp_path_factory, tiny_shards, tmp_path):
    export = exported(tmp_path_factory, tiny_shards, "zero2")
    env = cpu_env(HF_HUB_CACHE=str(hub_cache(tmp_path, "memformers-test/tiny", export)), HF_HUB_OFFLINE="1")
    out = tmp_path / "eval"
    run([sys.executable, "pretrain/evaluate.py", "--model", "memformers-test/tiny", "--data", str(tiny_shards),
         "--output", str(out)], env=env)  # fmt: skip
    result = json.loads((out / "eval.json").read_text())
    assert result["model"]["kind"] == "export" and result["model"]["tag"] == "step-00000003"
    assert_same_figures(result, evaluate_corpora(load_eval_model(str(export)), [tiny_shards]))


def test_mismatched_data_and_models_are_refused_with_the_reason(tmp_path_factory, tiny_shards, shard_dir, tmp_path):
    run_dir = trained_runs(tmp_path_factory, tiny_shards, ("zero2",))["zero2"]
    model = load_eval_model(str(run_dir))
    with pytest.raises(EvalError, match="another tokenizer than the model's"):
        evaluate_corpora(model, [shard_dir])
    with pytest.raises(EvalError, match="is not a model: give a run directory"):
        load_eval_model(str(tmp_path))
    with pytest.raises(EvalError, match="no 'test' split"):
        evaluate_corpora(model, [tiny_shards], split="test")
    proc = run([sys.executable, "pretrain/evaluate.py", "--model", str(run_dir), "--data", str(shard_dir),
                "--output", str(tmp_path / "out")], env=cpu_env(), check=False)  # fmt: skip
    assert proc.returncode == 2 and "tokenizer" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
