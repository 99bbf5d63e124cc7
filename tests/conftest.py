"""Shared helpers: compose configs like train.py does, and run tiny trainings in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DATA = ROOT / "data"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# A run that takes a second or two: tiny random BERT, 64 SST-2 sentences, 32 to score.
TINY = [
    "model=tiny-bert",
    "logger=csv",
    "trainer.progress_bar=false",
    "trainer.max_steps=-1",
    "trainer.batch_size=8",
    "task.max_train_samples=64",
    "task.max_eval_samples=32",
    "trainer.latency_examples=4",  # inference timed on 4 examples, not 32: the path runs, cheaply
    f"data_dir={DATA}",
]


def compose(*overrides: str):
    from peftlab.cli import compose_config

    return compose_config(CONF, list(overrides))


def train_tiny(run_dir: Path, *overrides: str):
    """Compose, validate and train in this process; returns the TrainedRun."""
    from peftlab.config import validate
    from peftlab.recipe import train

    raw = compose(*TINY, *overrides)
    return train(validate(raw), raw, run_dir)


def one_line_failure(run_dir: Path, *overrides: str) -> str:
    """A mistake found once the run starts, in this process: the PeftlabError whose message is the
    line train.py prints (its exit and stderr are tested for one row of each kind in
    tests/test_bad_input.py); no finished run is left."""
    from peftlab.errors import PeftlabError

    with pytest.raises(PeftlabError) as caught:
        train_tiny(run_dir, *overrides)
    assert "\n" not in str(caught.value) and not (run_dir / "metrics.json").exists()
    return str(caught.value)


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python train.py ARGS` as a user runs it."""
    return run_command([str(ROOT / "train.py"), *args], cwd=cwd, timeout=timeout, env=env)


def run_command(argv: list[str], cwd: Path = ROOT, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python ARGV` (a script or `-m module` and its arguments) in a fresh process."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> str:
    """The bad-input contract: exit 2, no traceback, and the last stderr line is the only `error:` line."""
    stderr = result.stderr
    assert "Traceback" not in stderr and "HYDRA_FULL_ERROR" not in stderr, stderr[-3000:]
    assert result.returncode == 2, f"exit {result.returncode}: {stderr[-3000:]}"
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]], stderr[-3000:]
    assert expected in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="session")
def sst2_available() -> None:
    if not (DATA / "glue" / "SST-2" / "train.tsv").is_file():
        pytest.fail("data/ is empty: run `dvc pull` (scripts/setup.sh does) before the tests")
