"""Pictures of a pretraining run (`RUN_DIR/metrics.jsonl`) and of an evaluation result, as PNG files.

`plot_run` draws a run's curves, finished or still training: training loss, lr, tokens/s, grad norm, eval loss
with and without memory, and the memory's gain by segment position at the last evaluation; a run that mixes
sources adds each source's share of the tokens and its eval losses. `plot_eval` draws an evaluation's loss by
segment position, with and without memory, one panel per corpus.

matplotlib is imported inside the functions (importing this module costs nothing) and draws with its Agg canvas
on a `Figure` of its own, never through pyplot: no global backend is switched and no figure is left open. A PNG
is written atomically (`memformers.files.atomic_write`): a reader, e.g. a browser refreshing it during a run,
sees the old picture or the new one, never a torn file.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from memformers.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PANEL_SIZE = (6.0, 3.2)
"""Inches per panel (width, height)."""
STEP_PANELS = (
    ("loss", "training loss", "nats/token"),
    ("lr", "learning rate", "lr"),
    ("tokens_per_s", "throughput", "tokens/s"),
    ("grad_norm", "gradient norm", "global L2 norm"),
)
"""The step record's curves: (key, panel title, y label)."""


def have_matplotlib() -> bool:
    """Whether matplotlib is installed (the `plots` extra: pip install 'memformers[plots]')."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def plot_run(run_dir: str | Path, output: str | Path) -> Path:
    """Draw the curves of the run in `run_dir` (its metrics.jsonl, complete or in progress) to the PNG `output`.

    Returns `output`. Raises ValueError when metrics.jsonl is missing or holds no record: nothing to plot yet."""
    from memformers.training.metrics import read_run_metrics

    path = Path(run_dir) / "metrics.jsonl"
    try:
        steps, evals = read_run_metrics(run_dir)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: nothing to plot yet") from None
    if not steps and not evals:
        raise ValueError(f"{path} holds no records yet: nothing to plot yet")
    return save_png(run_figure(steps, evals, title=Path(run_dir).resolve().name), output)


def plot_eval(result: dict, output: str | Path) -> Path:
    """Draw an evaluation result's loss by segment position, with and without memory, one panel per corpus, to
    the PNG `output`. Returns `output`; ValueError when `result` has no corpora."""
    return save_png(eval_figure(result), output)


def run_figure(steps: list[dict], evals: list[dict], title: str | None = None) -> Figure:
    """The figure `plot_run` saves, from metrics.jsonl's step and eval records (`read_run_metrics`).

    Six panels (the step curves, eval loss over steps, memory gain by position), eight when the run mixes sources
    (more than one name in the step records' `tokens_by_source` or the eval records' `eval_loss_by_source`). Null
    values (a skipped step's loss) leave gaps; a panel with nothing to draw yet says so."""
    sources = source_names(steps, evals)
    panels = len(STEP_PANELS) + 2 + (2 if len(sources) > 1 else 0)
    fig, axes = new_figure(panels, columns=2)
    for ax, (key, name, unit) in zip(axes, STEP_PANELS):
        draw_series(ax, steps, key, name=name, unit=unit)
    draw_eval_losses(axes[4], evals)
    draw_gain_by_position(axes[5], evals[-1] if evals else None)
    if len(sources) > 1:
        draw_token_shares(axes[6], steps, sources)
        draw_source_eval_losses(axes[7], evals, sources)
    last = steps[-1]["step"] if steps else evals[-1]["step"]
    fig.suptitle(f"{title or 'run'}: step {last}" + (f", {len(sources)} sources" if len(sources) > 1 else ""))
    fig.tight_layout()
    return fig


def eval_figure(result: dict) -> Figure:
    """The figure `plot_eval` saves: for each corpus of `result["corpora"]`, its loss by segment position with
    memory carried and with memory reset at every segment; the panel's title gives the corpus's memory gain."""
    corpora = result.get("corpora") or {}
    if not corpora:
        raise ValueError("the evaluation result has no corpora: nothing to plot")
    fig, axes = new_figure(len(corpora), columns=min(len(corpora), 3))
    for ax, (name, corpus) in zip(axes, corpora.items()):
        for key, label, style in (
            ("eval_loss_by_position", "memory carried", "o-"),
            ("eval_loss_no_memory_by_position", "memory reset", "s--"),
        ):
            values = [number(v) for v in corpus.get(key) or []]
            ax.plot(range(len(values)), values, style, ms=3, label=label)
        gain = number(corpus.get("memory_gain"))
        ax.set_title(f"{name}: memory gain {gain:+.4f}" if math.isfinite(gain) else name)
        label_axes(ax, "segment position in document", "loss (nats/token)")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def new_figure(panels: int, columns: int) -> tuple[Figure, list[Axes]]:
    """A figure of `panels` axes in rows of `columns`, on matplotlib's Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows))
    FigureCanvasAgg(fig)
    grid = fig.subplots(rows, columns, squeeze=False).ravel().tolist()
    for ax in grid[panels:]:
        ax.remove()  # an incomplete last row: the figure holds exactly `panels` axes
    return fig, grid[:panels]


def save_png(fig: Figure, output: str | Path) -> Path:
    """Render `fig` as PNG and write it atomically to `output` (its folder is made if needed)."""
    output = Path(output)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, buffer.getvalue())
    return output


def number(value) -> float:
    """A record's value as a float to plot: null (or absent) is NaN, which matplotlib leaves as a gap."""
    return math.nan if value is None else float(value)


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values of `key`) over `records`; a null or absent value is NaN."""
    return [r["step"] for r in records], [number(r.get(key)) for r in records]


def marker(points: int) -> str | None:
    """Dots on a curve of few points (a run just started), where lines alone would show almost nothing."""
    return "." if points <= 30 else None


def label_axes(ax: Axes, xlabel: str, ylabel: str) -> None:
    """Axis labels, a light grid, and whole-number ticks on x (steps and segment positions are counts)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def nothing_yet(ax: Axes, message: str) -> None:
    """Say in an empty panel why it is empty (a run in progress has not evaluated yet, say)."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="gray")


def draw_series(ax: Axes, steps: list[dict], key: str, *, name: str, unit: str) -> None:
    """One step record curve over optimizer steps."""
    x, y = series(steps, key)
    ax.plot(x, y, lw=0.9, marker=marker(len(x)))
    if len(set(x)) == 1:  # one step so far: a whole-step range around it (else the ticks are fractions)
        ax.set_xlim(x[0] - 1, x[0] + 1)
    ax.set_title(name)
    label_axes(ax, "optimizer step", unit)
    if not any(math.isfinite(v) for v in y):
        nothing_yet(ax, f"no {name} logged yet")


def draw_eval_losses(ax: Axes, evals: list[dict]) -> None:
    """Eval loss over steps, with memory carried across segments and with it reset at every segment."""
    ax.set_title("eval loss")
    label_axes(ax, "optimizer step", "loss (nats/token)")
    if not evals:
        nothing_yet(ax, "no evaluation yet")
        return
    for key, label, style in (
        ("eval_loss", "memory carried", "o-"),
        ("eval_loss_no_memory", "memory reset every segment", "s--"),
    ):
        ax.plot(*series(evals, key), style, ms=3, label=label)
    ax.legend(fontsize="small")


def draw_gain_by_position(ax: Axes, record: dict | None) -> None:
    """The last evaluation's memory gain (loss without memory - with memory) at each segment position of a
    document; positions no document reached (null) are left out."""
    ax.set_title("memory gain by segment position" + (f" (step {record['step']})" if record else ""))
    label_axes(ax, "segment position in document", "gain (nats/token)")
    with_memory = (record or {}).get("eval_loss_by_position") or []
    without = (record or {}).get("eval_loss_no_memory_by_position") or []
    gains = [(p, b - a) for p, (a, b) in enumerate(zip(with_memory, without)) if a is not None and b is not None]
    if not gains:
        nothing_yet(ax, "no evaluation yet" if record is None else "no position evaluated")
        return
    ax.bar([p for p, _ in gains], [g for _, g in gains], width=0.8)
    ax.axhline(0.0, color="black", lw=0.6)


def source_names(steps: list[dict], evals: list[dict]) -> list[str]:
    """The sources a run mixes: every name in the step records' `tokens_by_source` and the eval records'
    `eval_loss_by_source`, sorted (one name, or none in a run from before sources were logged: no mixture)."""
    names = set()
    for record in steps:
        names.update(record.get("tokens_by_source") or {})
    for record in evals:
        names.update(record.get("eval_loss_by_source") or {})
    return sorted(names)


def draw_token_shares(ax: Axes, steps: list[dict], sources: list[str]) -> None:
    """Each source's share of the tokens trained on so far (cumulative tokens_by_source over their sum)."""
    ax.set_title("token share by source")
    label_axes(ax, "optimizer step", "share of tokens so far")
    logged = [r for r in steps if sum((r.get("tokens_by_source") or {}).values()) > 0]
    if not logged:
        nothing_yet(ax, "no tokens by source logged yet")
        return
    x = [r["step"] for r in logged]
    for name in sources:
        shares = [r["tokens_by_source"].get(name, 0) / sum(r["tokens_by_source"].values()) for r in logged]
        ax.plot(x, shares, lw=0.9, marker=marker(len(x)), label=name)
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize="small")


def draw_source_eval_losses(ax: Axes, evals: list[dict], sources: list[str]) -> None:
    """Each source's eval loss over steps: memory carried (solid) and memory reset (dashed), one colour a source."""
    ax.set_title("eval loss by source (dashed: memory reset)")
    label_axes(ax, "optimizer step", "loss (nats/token)")
    logged = [r for r in evals if r.get("eval_loss_by_source")]
    if not logged:
        nothing_yet(ax, "no evaluation by source yet")
        return
    x = [r["step"] for r in logged]
    for name in sources:
        with_memory = [number((r.get("eval_loss_by_source") or {}).get(name)) for r in logged]
        without = [number((r.get("eval_loss_no_memory_by_source") or {}).get(name)) for r in logged]
        (line,) = ax.plot(x, with_memory, "o-", ms=3, label=name)
        ax.plot(x, without, "s--", ms=3, color=line.get_color())
    ax.legend(fontsize="small")
