"""pretrain/plot_run.py and memformers.plots on the metrics.jsonl of a real tiny training run: finished, in
progress (a few steps, a half-written last line, no evaluation yet), reshaped as a mixture of two sources, and
absent; `plot_eval` on an evaluation result of several corpora."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import tiny_run_args
from launch import run

from memformers.plots import eval_figure, plot_eval, plot_run, run_figure
from memformers.training.metrics import read_run_metrics

pytestmark = pytest.mark.slow  # the module shares one real tiny training run (~12 s) and its SHARD_DIR

PLOT = "pretrain/plot_run.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASE_PANELS = 6  # loss, lr, tokens/s, grad norm, eval loss over steps, memory gain by position
MIXTURE_PANELS = BASE_PANELS + 2  # + token share by source, eval loss by source


@pytest.fixture(scope="module")
def run_dir(tiny_shards, tmp_path_factory) -> Path:
    """A finished 4-step run of pretrain/train.py, evaluated after steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("plot") / "run"
    args = tiny_run_args(run_dir, tiny_shards, "train.max_steps=4", "eval.every_steps=2")
    run([sys.executable, "pretrain/train.py", *args])
    return run_dir


def read_png(path: Path):
    """The image at `path`, after checking it is a PNG of some substance; matplotlib decodes it."""
    import matplotlib.image

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 10_000, len(data)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200, image.shape
    return image


def plot_script(*args: str):
    return run([sys.executable, PLOT, *map(str, args)], check=False)


def write_records(run_dir: Path, records: list[dict], tail: str = "") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return run_dir


def test_finished_run_draws_its_curves(run_dir):
    steps, evals = read_run_metrics(run_dir)
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert [e["step"] for e in evals] == [2, 4]
    proc = plot_script(run_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(run_dir / "curves.png")
    read_png(run_dir / "curves.png")
    assert not [p.name for p in run_dir.iterdir() if ".tmp-" in p.name]  # written through a temporary file
    assert len(run_figure(steps, evals).axes) == BASE_PANELS


def test_run_in_progress_draws_too(run_dir, tmp_path):
    """Two steps, no evaluation yet, a null loss (a skipped step) and a last line the trainer is still writing."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    first = [json.loads(line) for line in lines if "loss" in json.loads(line)][:2]
    first[1] |= {"loss": None, "grad_norm": None}
    partial = write_records(tmp_path / "partial", first, tail=lines[-1][: len(lines[-1]) // 2])
    steps, evals = read_run_metrics(partial)
    assert [s["step"] for s in steps] == [1, 2] and evals == []
    output = tmp_path / "out" / "partial.png"
    proc = plot_script(partial, "--output", output)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(output)
    read_png(output)


def test_undecodable_line_before_the_last_is_an_error(run_dir, tmp_path):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text("\n".join([lines[0], lines[1][:10], *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2"):
        read_run_metrics(broken)


def mixture_records(steps: list[dict], evals: list[dict]) -> list[dict]:
    """The real run's records as a two-source mixture would log them: the tokens split 3:1 between "books" and
    "web", each evaluation's losses split around the real ones."""
    records = []
    for record in sorted(steps + evals, key=lambda r: (r["step"], "eval_loss" in r)):
        record = dict(record)
        if "loss" in record:
            web = record["tokens"] // 4
            record["tokens_by_source"] = {"books": record["tokens"] - web, "web": web}
        else:
            loss, reset = record["eval_loss"], record["eval_loss_no_memory"]
            record["eval_loss_by_source"] = {"books": loss - 0.1, "web": loss + 0.1}
            record["eval_loss_no_memory_by_source"] = {"books": reset - 0.05, "web": reset + 0.15}
            record["memory_gain_by_source"] = {"books": reset - loss + 0.05, "web": reset - loss + 0.05}
        records.append(record)
    return records


def test_mixture_run_adds_per_source_panels(run_dir, tmp_path):
    mixed = write_records(tmp_path / "mixed", mixture_records(*read_run_metrics(run_dir)))
    steps, evals = read_run_metrics(mixed)
    fig = run_figure(steps, evals)
    assert len(fig.axes) == MIXTURE_PANELS
    share = next(ax for ax in fig.axes if ax.get_title() == "token share by source")
    assert sorted(line.get_label() for line in share.get_lines()) == ["books", "web"]
    assert abs(share.get_lines()[0].get_ydata()[-1] - 0.75) < 0.01
    by_source = next(ax for ax in fig.axes if ax.get_title().startswith("eval loss by source"))
    assert len(by_source.get_lines()) == 4  # with and without memory, for each source
    assert plot_run(mixed, mixed / "curves.png") == mixed / "curves.png"
    read_png(mixed / "curves.png")


def test_nothing_to_plot_exits_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for run_dir in (empty, write_records(tmp_path / "blank", [])):
        proc = plot_script(run_dir)
        assert proc.returncode == 2
        assert "metrics.jsonl" in proc.stderr and "nothing to plot" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (run_dir / "curves.png").exists()
    proc = plot_script(tmp_path / "missing")
    assert proc.returncode == 2 and "missing" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_plot_eval_draws_one_panel_per_corpus(run_dir, tmp_path):
    """An evaluation of three corpora built from the run's last evaluation; one has a position no document
    reached (null)."""
    last = read_run_metrics(run_dir)[1][-1]
    keys = ("eval_loss", "eval_loss_no_memory", "memory_gain", "eval_loss_by_position")
    corpus = {key: last[key] for key in (*keys, "eval_loss_no_memory_by_position")}
    result = {"corpora": {"val": corpus, "books": dict(corpus), "web": dict(corpus)}, "step": last["step"]}
    result["corpora"]["web"]["eval_loss_by_position"] = [*corpus["eval_loss_by_position"], None]
    output = plot_eval(result, tmp_path / "eval.png")
    assert output == tmp_path / "eval.png"
    read_png(output)
    fig = eval_figure(result)
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["val", "books", "web"]
    assert f"{last['memory_gain']:+.4f}" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="no corpora"):
        plot_eval({"corpora": {}}, tmp_path / "none.png")
