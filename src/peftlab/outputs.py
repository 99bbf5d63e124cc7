"""The run folder: claimed first, resolved config next, weights, then metrics.json last and atomically.

A run folder with a metrics.json is a finished run; anything else is an interrupted one, so a crash
can never leave a result that looks complete. A finished run is never overwritten, and two live
runs never share a folder: the first holds a lock on it until it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from peftlab.errors import DataError, RunFolderError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
WEIGHTS_DIR = "weights"
LOCK_FILE = ".run.lock"


def refuse_finished(run_dir: Path) -> None:
    if (run_dir / METRICS_FILE).is_file():
        raise RunFolderError(
            f"{run_dir} already holds a finished run ({METRICS_FILE}); choose another folder "
            "(hydra.run.dir=...), or delete this one to train it again"
        )


@contextlib.contextmanager
def claim_run_folder(run_dir: Path) -> Iterator[None]:
    """This run's folder, and no other live run's: refuse a finished one, or one another process
    holds; a crashed run's folder (no metrics.json, no live holder) is taken over. The lock is an
    flock, so the kernel releases it whenever the holder exits, even by SIGKILL."""
    run_dir.mkdir(parents=True, exist_ok=True)
    refuse_finished(run_dir)
    with open(run_dir / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(
                f"{run_dir} is in use by another run that is still going; give this run its own folder "
                "(hydra.run.dir=...), or keep the default, which is unique per run"
            ) from None
        refuse_finished(run_dir)  # the holder may have finished just before we got the lock
        try:
            yield
        finally:
            # Unlinked while still held: a run that opens the path after this locks a new file, and
            # then finds this run's metrics.json (or none, if this one crashed: the folder is free).
            (run_dir / LOCK_FILE).unlink(missing_ok=True)


def start_run_folder(run_dir: Path, raw: DictConfig) -> None:
    """Clear the weights a crashed run in this folder left, then write the fully resolved config
    (the model's folder, the method's lr...), enough to rebuild the run."""
    shutil.rmtree(run_dir / WEIGHTS_DIR, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CONFIG_FILE, OmegaConf.to_yaml(raw, resolve=True))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    atomic_write(run_dir / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=False) + "\n")


# What every finished run's metrics.json holds; a file without them was not written by this recipe.
RECORD_KEYS = ("status", "model", "method", "task", "seed", "main_metric", "eval", "params", "train")


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """A run's metrics.json, or one DataError line when it is not a run record."""
    path = run_dir / METRICS_FILE
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not a run record: not valid JSON ({err.msg} at line {err.lineno})") from None
    missing = [key for key in RECORD_KEYS if key not in record] if isinstance(record, dict) else list(RECORD_KEYS)
    if missing:
        raise DataError(f"{path} is not a run record: it has no {', '.join(missing)} (rerun the training to rewrite it)")
    return record


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


def summary_line(metrics: dict[str, Any], run_dir: Path) -> str:
    """The line a finished run ends with: its main result, its size, its time and where it is."""
    ev, params = metrics["eval"], metrics["params"]
    main = metrics["main_metric"]
    return (
        f"finished {metrics['method']} on {metrics['task']} ({metrics['model']}, seed {metrics['seed']}): "
        f"{ev['split']} {main} {ev[main]:.4f} (n={ev['n']}) | trainable {params['trainable']:,} of "
        f"{params['total']:,} ({params['trainable_percent']:.3f}%) | trained in {metrics['train']['time_s']:.1f} s | {run_dir}"
    )


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
