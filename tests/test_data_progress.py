"""The sharder's progress on stderr (memformers.data.prep.progress): a bar on a terminal, lines in a log, nothing on
a rank other than 0; documents/s, tokens/s, and the share of the input bytes read with an ETA from it."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from data_fixtures import REPO

from memformers.data.prep.progress import Progress


def test_a_log_gets_lines_with_rates_share_and_eta(capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    progress = Progress("sharding", total_bytes=4 << 20, enabled=True, reused=1 << 20, every=0.0)
    progress.wrote(1200, 480_000)
    progress.read_bytes(1 << 20)
    progress.close()
    lines = capsys.readouterr().err.splitlines()  # not a terminal here: lines, not a bar
    assert len(lines) == 3 and all(line.startswith("sharding: ") for line in lines)
    assert re.search(
        r"50\.0% of 4\.0 MiB read, 1,200 docs, 480,000 tokens \([\d,]+ docs/s, [\d,]+ tokens/s\) ETA ", lines[1]
    )
    assert "ETA" not in lines[0]  # nothing read by this run yet: no rate to extrapolate


def test_only_rank_zero_shows_progress(capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_PROCID", "3")
    progress = Progress("sharding", total_bytes=100, enabled=True, every=0.0)
    progress.wrote(1, 1)
    progress.close()
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_a_bar_with_rates_and_eta(tmp_path: Path, synthetic_jsonl: Path, bpe_tokenizer: Path) -> None:
    """The real script on a pseudo-terminal (120 columns): tqdm's bar over the input bytes, with its ETA, and the
    documents/s and tokens/s."""
    terminal, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    command = [sys.executable, str(REPO / "data_prep" / "shard_documents.py"), "--input", str(synthetic_jsonl),
               "--tokenizer", str(bpe_tokenizer), "--output", str(tmp_path / "s"), "--segment-length", "64",
               "--workers", "1", "--block-bytes", "20000"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RANK", None), env.pop("SLURM_PROCID", None)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=child, env=env)
    os.close(child)
    shown = b""
    while True:
        if select.select([terminal], [], [], 1.0)[0]:
            try:
                data = os.read(terminal, 1 << 16)
            except OSError:  # the child side closed
                break
            if not data:
                break
            shown += data
        elif proc.poll() is not None:
            break
    assert proc.wait(timeout=60) == 0
    frames = [f for f in shown.decode("utf-8", "replace").split("\r") if f.startswith("sharding:")]
    last = frames[-1]
    assert re.search(
        r"100%\|.*\| [\d.]+[kM]?/[\d.]+[kM]? \[[\d:]+<[\d:]+, .*B/s, [\d,]+ docs/s, [\d,]+ tokens/s\]", last
    )
