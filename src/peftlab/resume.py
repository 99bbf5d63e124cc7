"""`resume=true` / `resume=<run folder>`: which interrupted run to continue, checked before torch loads.

A run started with `trainer.checkpoint_every=N` keeps `checkpoint/last.ckpt` in its folder until it
finishes. Rerunning the same command with `resume=true` finds the newest such folder of the same
config beside where the new run would go (runs/<task>/<model>/<label>-s<seed>/), and the run
continues there. Only settings that cannot change the result may differ from the interrupted run's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from peftlab.errors import ConfigError
from peftlab.outputs import CONFIG_FILE, METRICS_FILE  # light: train.py's preflight imports it already

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "last.ckpt"
# Keys a resumed run may set differently: how it is shown, logged and fed, not what it computes.
MAY_DIFFER = ("resume", "logger", "trainer.progress_bar", "trainer.checkpoint_every", "trainer.latency_examples", "trainer.num_workers",
              "trainer.threads")
SAFE_PATH = re.compile(r"^[\w./~-]+$")


def checkpoint_file(folder: Path) -> Path:
    """Where a run folder keeps its resumable checkpoint."""
    return folder / CHECKPOINT_DIR / CHECKPOINT_FILE


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): tree}


def config_differences(saved: dict, now: dict) -> list[str]:
    """'key: A there, B here' for every setting that differs, outside MAY_DIFFER."""
    before, after = flatten(saved), flatten(now)
    changed = []
    for key in sorted(before.keys() | after.keys()):
        if any(key == k or key.startswith(k + ".") for k in MAY_DIFFER):
            continue
        if before.get(key, "<unset>") != after.get(key, "<unset>"):
            changed.append(f"{key}: {before.get(key, '<unset>')} there, {after.get(key, '<unset>')} here")
    return changed


def saved_config(folder: Path) -> dict:
    import yaml

    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"resume={folder}: it holds a checkpoint but no {CONFIG_FILE}, so its config cannot be checked; allowed: resume=false")
    return yaml.safe_load(path.read_text()) or {}


def check_resumable(folder: Path, now: dict) -> None:
    """One line for a folder that cannot be continued by this config."""
    if not folder.is_dir():
        raise ConfigError(f"resume={folder}: no such run folder; allowed: resume=true (the newest interrupted run of this config) or a run folder")
    if (folder / METRICS_FILE).is_file():
        raise ConfigError(f"resume={folder}: that run finished ({METRICS_FILE}); there is nothing to resume, its results are final")
    if not checkpoint_file(folder).is_file():
        raise ConfigError(
            f"resume={folder}: no checkpoint in it ({CHECKPOINT_DIR}/{CHECKPOINT_FILE}); a run writes one only with "
            "trainer.checkpoint_every=N, so this one can only be trained again from the start (resume=false)"
        )
    changed = config_differences(saved_config(folder), now)
    if changed:
        more = f" and {len(changed) - 2} more" if len(changed) > 2 else ""
        raise ConfigError(
            f"resume={folder}: its checkpoint is from another config ({'; '.join(changed[:2])}{more}); "
            f"allowed: the same settings as that run (only {', '.join(MAY_DIFFER[1:])} may change), or resume=false"
        )


def find_interrupted(parent: Path, now: dict) -> Path:
    """The newest folder under `parent` holding a checkpoint, no metrics.json and this config."""
    candidates = sorted(
        (f for f in parent.glob("*") if checkpoint_file(f).is_file() and not (f / METRICS_FILE).is_file()),
        key=lambda f: checkpoint_file(f).stat().st_mtime,
        reverse=True,
    )
    for folder in candidates:
        if (folder / CONFIG_FILE).is_file() and not config_differences(saved_config(folder), now):
            return folder
    if candidates:
        check_resumable(candidates[0], now)  # says how the newest one differs
    raise ConfigError(
        f"resume=true: no interrupted run of this config with a checkpoint under {parent}/ (a run writes one with "
        "trainer.checkpoint_every=N); allowed: resume=false to start afresh, or resume=<run folder>"
    )


def resume_folder(resume: Any, default_dir: Path, explicit_dir: Optional[Path], now: dict) -> Path:
    """The folder `resume` names, checked: a path, hydra.run.dir, or the newest match beside `default_dir`."""
    if isinstance(resume, str):
        folder = Path(resume)
        if explicit_dir is not None and explicit_dir.resolve() != folder.resolve():
            raise ConfigError(f"resume={resume} and hydra.run.dir={explicit_dir} name two folders; a resumed run continues in its own, so give one")
    else:
        folder = explicit_dir if explicit_dir is not None else find_interrupted(default_dir.parent, now)
    check_resumable(folder, now)
    return folder


def hydra_value(path: Path) -> str:
    """A path as a Hydra override value (quoted when it holds characters the grammar reads)."""
    text = str(path)
    return text if SAFE_PATH.match(text) else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
