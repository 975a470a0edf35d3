"""The pretraining engine's components: config, distributed runtime, memory recurrence, evaluation, checkpoints,
metrics. `pretrain/train.py` composes them into the recipe."""
