"""What an export reports: its outcome (`ExportReport`) and the two exceptions callers catch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TOLERANCE = 1e-5


class ExportError(RuntimeError):
    """An input problem, phrased as what to do about it."""


class VerificationError(ExportError):
    """
    The exported model does not reproduce the training model's logits.

    Args:
        message (`str`):
            What failed, and where the unpublished export was left.
        report ([`ExportReport`]):
            The export's report, with the difference that failed the check.
    """

    def __init__(self, message: str, report: ExportReport):
        super().__init__(message)
        self.report = report


@dataclass
class ExportReport:
    """
    The outcome of one export.

    Args:
        out_dir (`Path`):
            The directory the export is (or, after a failed check, would have been) published to.
        tag (`str`):
            The checkpoint tag exported, e.g. `step-00000200`.
        step (`int`):
            The optimizer step of that checkpoint (-1 when `trainer_state.json` does not say).
        tokens (`int`):
            The training tokens seen up to that checkpoint.
        dtype (`str`):
            The dtype of the saved weights, `"fp32"` or `"bf16"`.
        zero_stage (`int`):
            The ZeRO stage the checkpoint was written with.
        num_parameters (`int`):
            The number of parameters of the model.
        max_abs_diff (`float`):
            Max |logits/memory difference| of the reloaded export vs the training model (both in fp32).
        tolerance (`float`):
            The largest `max_abs_diff` that passes the check.
        rounding_max_abs_diff (`float`, *optional*):
            For `dtype="bf16"`: how much rounding the weights to bf16 moves the same outputs (information, not a
            check).
        files (`list[str]`, *optional*):
            The names of the files in the export.
    """

    out_dir: Path
    tag: str
    step: int
    tokens: int
    dtype: str
    zero_stage: int
    num_parameters: int
    max_abs_diff: float
    tolerance: float
    rounding_max_abs_diff: float | None = None
    files: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether the reloaded export reproduced the training model within `tolerance`."""
        return self.max_abs_diff <= self.tolerance

    def summary(self) -> str:
        """The report in a few lines, as `pretrain/export_hf.py` prints it."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"exported {self.tag} (step {self.step}, {self.tokens:,} tokens, ZeRO-{self.zero_stage}, "
            f"{self.num_parameters:,} parameters) as {self.dtype} to {self.out_dir}",
            f"check {verdict}: max abs diff of logits and memory over 2 segments, export (remote code, fp32) "
            f"vs training model = {self.max_abs_diff:.3e} (tolerance {self.tolerance:.0e})",
        ]
        if self.rounding_max_abs_diff is not None:
            lines.append(
                f"note: rounding the fp32 masters to bf16 moves the same outputs by up to "
                f"{self.rounding_max_abs_diff:.3e}"
            )
        return "\n".join(lines)
