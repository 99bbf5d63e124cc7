"""Rebuild a finished run's model from its folder the way a user would: base model + saved weights."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from peftlab.architectures import architecture_of
from peftlab.config import Config, config_errors, validate
from peftlab.errors import ConfigError, DataError, first_line
from peftlab.methods import METHODS
from peftlab.models import load_model
from peftlab.outputs import CONFIG_FILE, METRICS_FILE, WEIGHTS_DIR
from peftlab.record import RunRecord
from peftlab.quiet import quiet_libraries
from peftlab.tasks import TASKS


def load_run_config(run_dir: Path) -> Config:
    """The config a finished run trained with; one DataError line for a folder that is not one."""
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run folder")
    if not (run_dir / METRICS_FILE).is_file():
        raise DataError(f"{run_dir} is not a finished run (no {METRICS_FILE})")
    RunRecord.read(run_dir)  # a run record, not any JSON file
    if not (run_dir / WEIGHTS_DIR).is_dir():
        raise DataError(f"{run_dir / WEIGHTS_DIR}: no saved weights in this run folder (copied without them?)")
    path = run_dir / CONFIG_FILE
    try:
        saved = OmegaConf.load(path)
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"{path} is not a readable run config ({first_line(err)})") from None
    if not isinstance(saved, DictConfig) or not saved:
        raise DataError(f"{path} is not a run config: it is empty or not a mapping")
    try:
        with config_errors():
            merged = OmegaConf.merge(OmegaConf.structured(Config), saved)
        return validate(merged)
    except ConfigError as err:
        raise DataError(f"{path}: {err}") from None  # e.g. its model folder is gone


def load_run(run_dir: Path, cfg: Optional[Config] = None):
    """(config, task, model in eval mode) for a finished run folder (`cfg`: its load_run_config, if read already)."""
    cfg = cfg or load_run_config(run_dir)
    quiet_libraries()
    task = TASKS.get(cfg.task.task, "task.task")(cfg.task, seed=cfg.seed)
    method = METHODS.get(cfg.peft.method, "peft.method")(cfg.peft)
    base = load_model(cfg.model, task, **method.load_options())
    from safetensors import SafetensorError

    try:
        arch = architecture_of(base, cfg.model.targets)
        model = method.load(base, run_dir / WEIGHTS_DIR, arch)
    except (ValueError, OSError, RuntimeError, SafetensorError) as err:  # files missing, corrupt, or from another model
        raise DataError(f"{run_dir / WEIGHTS_DIR}: the saved weights cannot be loaded ({first_line(err)})") from None
    return cfg, task, model.eval()
