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

from peftlab.errors import ConfigError, DataError, RunFolderError

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
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CONFIG_FILE, OmegaConf.to_yaml(raw, resolve=True))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    atomic_write(run_dir / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=False) + "\n")


# What every finished run's metrics.json holds, with the type of each value; a file without them
# was not written by this recipe (or was damaged since).
NUMBER = (int, float)
RECORD_SCHEMA: dict[str, Any] = {
    "status": str, "model": str, "method": str, "task": str, "seed": int, "main_metric": str,
    "eval": {"split": str, "n": int},
    "params": {"trainable": int, "total": int, "trainable_percent": NUMBER},
    "train": {"time_s": NUMBER, "samples_per_s": NUMBER},
    "memory": {"peak_mb": NUMBER},
    "weights": {"bytes": int},
}  # fmt: skip
RECORD_KEYS = tuple(RECORD_SCHEMA)


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
    problem = _schema_problem(record, RECORD_SCHEMA, "")
    if problem is None and isinstance(record["eval"], dict):
        main = record["main_metric"]
        if not isinstance(record["eval"].get(main), NUMBER):
            problem = f"eval.{main} (its main metric) is not a number"
    if problem:
        raise DataError(f"{path} is not a run record: {problem} (rerun the training to rewrite it)")
    return record


def _schema_problem(value: Any, schema: Any, where: str) -> str | None:
    """The first place where `value` does not have the shape `schema` describes, or None."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{where} is not a mapping"
        for key, inner in schema.items():
            if key not in value:
                return f"it has no {where + '.' if where else ''}{key}"
            problem = _schema_problem(value[key], inner, f"{where + '.' if where else ''}{key}")
            if problem:
                return problem
        return None
    if isinstance(value, bool) or not isinstance(value, schema):
        return f"{where} is {value!r}, not a {'number' if schema is NUMBER else schema.__name__}"
    return None


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
