"""The run folder: claimed first, resolved config next, weights, then metrics.json last and atomically.

A run folder with a metrics.json is a finished run; anything else is an interrupted one, so a crash
can never leave a result that looks complete. A finished run is never overwritten, and two live
runs never share a folder: the first holds a lock on it until it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from peftlab.errors import ConfigError, RunFolderError

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


def make_output_folder(folder: Path, key: str) -> Path:
    """Create an output folder up front, so a path through a file or a place without write access
    is one line before the work, not a traceback after it."""
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise ConfigError(f"{key}={folder}: {part} is a file; allowed: a folder (it is created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{key}={folder} cannot be created ({err.strerror})") from None
    try:
        with tempfile.TemporaryFile(dir=folder):  # a folder that exists may still refuse files (/proc, read-only mounts)
            pass
    except OSError as err:
        raise ConfigError(f"{key}={folder}: no file can be created in this folder ({err.strerror}); allowed: a folder peftlab can write in") from None
    return folder


def hold_run_folder(run_dir: Path) -> None:
    """Take the folder's lock for this process, or refuse a folder that holds a finished run or
    that another live run holds. The lock is an flock: the kernel releases it whenever the holder
    exits, even by SIGKILL, so a crashed run's folder (no metrics.json) can be taken over.
    `train.py` takes it before Hydra writes into the folder; the recipe's claim then keeps it."""
    key = run_dir.resolve()
    if key in _HELD:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    refuse_finished(run_dir)
    handle = open(run_dir / LOCK_FILE, "a")  # noqa: SIM115 -- held open until the run ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunFolderError(
            f"{run_dir} is in use by another run that is still going; give this run its own folder "
            "(hydra.run.dir=...), or keep the default, which is unique per run"
        ) from None
    try:
        refuse_finished(run_dir)  # the holder may have finished just before we got the lock
    except RunFolderError:
        handle.close()
        raise
    _HELD[key] = handle


_HELD: dict[Path, Any] = {}  # run folders whose lock this process holds, and the open lock files


@contextlib.contextmanager
def claim_run_folder(run_dir: Path) -> Iterator[None]:
    """This run's folder, and no other live run's, for the duration of the block (see hold_run_folder)."""
    hold_run_folder(run_dir)
    try:
        yield
    finally:
        # Unlinked while still held: a run that opens the path after this locks a new file, and
        # then finds this run's metrics.json (or none, if this one crashed: the folder is free).
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
        _HELD.pop(run_dir.resolve()).close()


def start_run_folder(run_dir: Path, raw: DictConfig) -> None:
    """Clear the weights a crashed run in this folder left, then write the fully resolved config
    (the model's folder, the method's lr...), enough to rebuild the run."""
    shutil.rmtree(run_dir / WEIGHTS_DIR, ignore_errors=True)
    for stale in run_dir.glob(predictions_file_name("*")):
        stale.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CONFIG_FILE, OmegaConf.to_yaml(raw, resolve=True))


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


def json_text(data: Any) -> str:
    """Strict JSON (RFC 8259) for the files other tools read: a value that is not finite (a
    correlation of one example is NaN) is written as null, since Python's NaN is not JSON."""
    return json.dumps(_finite_or_null(data), indent=2, allow_nan=False) + "\n"


def _finite_or_null(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite_or_null(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite_or_null(value) for value in data]
    return data


def predictions_file_name(split: str) -> str:
    return f"predictions_{split}.jsonl"


def write_predictions(folder: Path, split: str, rows: list[dict]) -> Path:
    """A generation task's answers on a split, one JSON object per line (prompt, reference, prediction)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / predictions_file_name(split)
    atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
