"""The run folder: resolved config first, weights next, metrics.json last and atomically.

A run folder with a metrics.json is a finished run; anything else is an interrupted one, so a crash
can never leave a result that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
WEIGHTS_DIR = "weights"


def start_run_folder(run_dir: Path, raw: DictConfig) -> None:
    """Clear what a previous run in this folder finished, then write the fully resolved config
    (the model's folder, the method's lr...), enough to rebuild the run."""
    (run_dir / METRICS_FILE).unlink(missing_ok=True)  # first: a reused folder must not look finished
    shutil.rmtree(run_dir / WEIGHTS_DIR, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CONFIG_FILE, OmegaConf.to_yaml(raw, resolve=True))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    atomic_write(run_dir / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=False) + "\n")


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / METRICS_FILE).read_text())


def atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: readers see all of it or nothing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
