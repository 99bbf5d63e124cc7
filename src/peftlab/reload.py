"""Rebuild a finished run's model from its folder the way a user would: base model + saved weights."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from peftlab.config import Config, validate
from peftlab.errors import DataError
from peftlab.methods import METHODS
from peftlab.models import load_model
from peftlab.outputs import CONFIG_FILE, METRICS_FILE, WEIGHTS_DIR
from peftlab.tasks import TASKS


def load_run_config(run_dir: Path) -> Config:
    if not (run_dir / METRICS_FILE).is_file():
        raise DataError(f"{run_dir} is not a finished run (no {METRICS_FILE})")
    return validate(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(run_dir / CONFIG_FILE)))


def load_run(run_dir: Path):
    """(config, task, model in eval mode) for a finished run folder."""
    cfg = load_run_config(run_dir)
    task = TASKS.get(cfg.task.task, "task.task")(cfg.task, seed=cfg.seed)
    base = load_model(cfg.model, task)
    model = METHODS.get(cfg.peft.method, "peft.method")(cfg.peft).load(base, run_dir / WEIGHTS_DIR)
    return cfg, task, model.eval()
