"""Evaluate any model of a run on any corpus, outside training: `pretrain/evaluate.py`.

    from memformers.evaluate import load_eval_model, evaluate_corpora
    model = load_eval_model("runs/tiny")                    # a run, RUN_DIR:TAG, a checkpoint dir, or an export
    result = evaluate_corpora(model, ["data/wiki-512"])      # eval.json's content

models.py finds and loads the model with the settings of the run it came from (noise, seed, lanes, evaluation
settings, the precision it computed in); corpora.py streams each corpus's split as training evaluates it (the same
lanes, noise and scoring, `memformers.training.evaluation`), so on the same checkpoint and corpus the figures are
those of the run's own evaluation.
"""

from __future__ import annotations

from .corpora import EVAL_JSON, EVAL_PNG, evaluate_corpora, write_results
from .models import EvalError, EvalModel, load_eval_model

__all__ = ["EVAL_JSON", "EVAL_PNG", "EvalError", "EvalModel", "evaluate_corpora", "load_eval_model", "write_results"]
