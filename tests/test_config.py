"""Config validation: every mistake is an error naming the key and what to do."""

import json

import pytest

from memformers.training.config import ConfigError, PretrainConfig, deepspeed_config, load_config
from memformers.training.engine import lr_lambda


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


BASE = "run_dir: r\ndata:\n  path: shards\n"


def test_shipped_configs_load():
    for name in ("tiny", "base", "large"):
        cfg = load_config(f"pretrain/configs/{name}.yaml")
        assert isinstance(cfg, PretrainConfig)
        assert cfg.run_dir and cfg.data.path and cfg.deepspeed.startswith("ds_configs/")
    assert load_config("pretrain/configs/base.yaml").model.preset == "membart-base"
    assert load_config("pretrain/configs/large.yaml").model.preset == "membart-large"


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(
        write(tmp_path, BASE),
        [
            "train.max_steps=7",
            "train.lr=1e-3",
            "train.memory_replay=true",
            "model.init_from=/x",
            "train.betas=[0.9, 0.95]",
            "noise.mask_ratio=0",
        ],
    )
    assert cfg.train.max_steps == 7 and cfg.train.lr == 1e-3 and cfg.train.memory_replay is True
    assert cfg.model.init_from == "/x" and cfg.train.betas == [0.9, 0.95] and cfg.noise.mask_ratio == 0.0


def test_unknown_key_lists_valid_keys_and_suggests(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, BASE + "train:\n  max_step: 3\n"))
    message = str(error.value)
    assert "train.max_step" in message and "Did you mean 'max_steps'" in message and "time_horizon" in message
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config(write(tmp_path, BASE), ["trian.lr=1"])


def test_wrong_types_and_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"train.max_steps must be int, got 'ten'"):
        load_config(write(tmp_path, BASE), ["train.max_steps=ten"])
    with pytest.raises(ConfigError, match="train.loss_weighting must be one of 'uniform', 'exponential'"):
        load_config(write(tmp_path, BASE), ["train.loss_weighting=linear"])
    with pytest.raises(ConfigError, match="data.lanes must be >= 1"):
        load_config(write(tmp_path, BASE), ["data.lanes=0"])
    with pytest.raises(ConfigError, match="run_dir is required"):
        load_config(write(tmp_path, "data:\n  path: x\n"))
    with pytest.raises(ConfigError, match="noise: .*mask_ratio"):
        load_config(write(tmp_path, BASE), ["noise.mask_ratio=1.5"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_deepspeed_json_must_agree_with_the_config(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["data.lanes=4", "train.rollouts_per_step=2"])
    ds = deepspeed_config(cfg, {"zero_optimization": {"stage": 2}}, world_size=3, on_cpu=True)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        4,
        2,
        24,
    )
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["gradient_clipping"] == cfg.train.grad_clip
    with pytest.raises(ConfigError, match=r"train_micro_batch_size_per_gpu=8 does not match data.lanes = 4"):
        deepspeed_config(cfg, {"train_micro_batch_size_per_gpu": 8}, world_size=1, on_cpu=True)
    with pytest.raises(ConfigError, match="remove 'optimizer'.*train.lr"):
        deepspeed_config(cfg, {"optimizer": {"type": "Adam"}}, world_size=1, on_cpu=True)
    with pytest.raises(ConfigError, match="at most one of fp16 and bf16"):
        deepspeed_config(cfg, {"fp16": {"enabled": True}, "bf16": {"enabled": True}}, world_size=1, on_cpu=True)
    # on a GPU: torch's fused AdamW kernel; with the optimizer offloaded to the CPU, DeepSpeed's CPU Adam
    gpu = deepspeed_config(cfg, {}, world_size=1, on_cpu=False)["optimizer"]["params"]
    assert gpu["torch_adam"] is True and gpu["fused"] is True
    offload = json.load(open("ds_configs/zero3_offload.json"))
    offloaded = deepspeed_config(cfg, offload, world_size=1, on_cpu=False)["optimizer"]["params"]
    assert "torch_adam" not in offloaded and "fused" not in offloaded


def test_shipped_deepspeed_configs_are_valid_for_the_shipped_presets():
    cfg = load_config("pretrain/configs/tiny.yaml")
    for stage in ("zero0", "zero1", "zero2", "zero3", "zero3_offload", "zero2_fp16", "zero2_fp32"):
        ds = deepspeed_config(cfg, json.load(open(f"ds_configs/{stage}.json")), world_size=2, on_cpu=True)
        assert ds["zero_optimization"]["stage"] == int(stage[4])


def test_lr_schedule_warms_up_then_decays_to_the_floor(tmp_path):
    for schedule in ("linear", "cosine"):
        cfg = load_config(
            write(tmp_path, BASE),
            ["train.warmup_steps=10", "train.max_steps=110", "train.min_lr_ratio=0.1", f"train.lr_schedule={schedule}"],
        )
        f = lr_lambda(cfg.train)
        assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
        assert f(10) == pytest.approx(1.0) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
        assert f(60) == pytest.approx(0.55)  # halfway: linear and cosine agree at the midpoint
        values = [f(s) for s in range(10, 111)]
        assert all(a >= b for a, b in zip(values, values[1:]))


def test_readme_config_reference_is_generated_from_the_schema():
    from pathlib import Path

    from memformers.training.config import config_reference

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("<!-- config-reference:start")
    body = readme[readme.index("\n", start) + 1 : readme.index("<!-- config-reference:end -->")]
    assert body == config_reference(), "README.md is stale: regenerate with python -m memformers.training.config"
