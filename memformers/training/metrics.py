"""Run observability on rank 0: `RUN_DIR/metrics.jsonl` (one JSON line per optimizer step and per evaluation),
a progress bar, and wandb with the same numbers (offline unless configured online; the run id survives resumes)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import secrets
from pathlib import Path

from tqdm import tqdm

from .config import LoggingSection


def wandb_mode(setting: str) -> str:
    """logging.wandb resolved: `auto` is online with WANDB_API_KEY or WANDB_MODE=online, else offline, and disabled
    where wandb is not installed (it is optional: the `wandb` extra)."""
    if setting != "auto":
        return setting  # online or offline without wandb installed: refused by the config's checks
    if importlib.util.find_spec("wandb") is None:
        return "disabled"
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class MetricsLogger:
    """Rank 0's records and messages (`enabled` on rank 0 only), from `start_step` on: a resumed run drops what a
    killed run logged after its checkpoint. `wandb_id` continues that wandb run; `config` is logged with it."""

    def __init__(
        self,
        run_dir: Path,
        logging: LoggingSection,
        *,
        enabled: bool,
        start_step: int,
        max_steps: int,
        wandb_id: str | None,
        config: dict,
    ):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb_run = None
        self.wandb_id = wandb_id
        self.bar = None
        if not enabled:
            return
        self._truncate_after(start_step)
        mode = wandb_mode(logging.wandb)
        if mode != "disabled":
            import wandb

            # wandb run ids are [a-z0-9]; made here (wandb's own helper moved between versions)
            self.wandb_id = wandb_id or secrets.token_hex(4)
            self.wandb_run = wandb.init(
                project=logging.wandb_project,
                name=logging.wandb_name or Path(run_dir).name,
                id=self.wandb_id,
                resume="allow",
                mode=mode,
                dir=str(run_dir),
                config=config,
            )
        if logging.progress_bar:
            self.bar = tqdm(total=max_steps, initial=start_step, desc="pretrain", dynamic_ncols=True, mininterval=1.0)

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites history from its checkpoint on: drop lines of steps after it (a killed run may
        have logged steps it never checkpointed)."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        # strict JSON: a non-finite number (a skipped step's loss) is written as null
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if not isinstance(v, list)}, step=record["step"])

    def progress(self, step: int, record: dict) -> None:
        if self.bar is None:
            return
        self.bar.n = step
        postfix = {
            "loss": f"{record['loss']:.4f}",
            "lr": f"{record['lr']:.2e}",
            "tok/s": f"{record['tokens_per_s']:.0f}",
        }
        if record.get("mfu") is not None:
            postfix["mfu"] = f"{record['mfu']:.1%}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def write(self, message: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def read_run_metrics(run_dir: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """The records of `RUN_DIR/metrics.jsonl` as (step records, eval records): a step record has `loss`, an eval
    record `eval_loss`, each list in file order.

    Readable while the run writes it: a last line that does not decode (half written) is left out. Any other line
    that does not decode raises ValueError naming the file and the line: the file is damaged, not in progress.
    A missing file raises FileNotFoundError."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            record, reason = None, error.msg
        else:
            reason = "not a JSON object"
        if isinstance(record, dict):
            records.append(record)
        elif index < len(numbered) - 1:
            raise ValueError(f"{path}, line {number}: not a metrics record ({reason})")
    return [r for r in records if "loss" in r], [r for r in records if "eval_loss" in r]
