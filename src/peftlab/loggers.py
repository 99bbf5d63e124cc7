"""Experiment loggers: a CSV log always, W&B (offline unless told otherwise) when enabled."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import lightning as L

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from peftlab.config import Config
from peftlab.errors import ConfigError


def build_loggers(cfg: Config, run_dir: Path, resolved: dict) -> list[Logger]:
    name = f"{cfg.task.name}-{cfg.model.name}-{cfg.peft.label()}-s{cfg.seed}"  # as the run folder names it
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version="logs")]
    if cfg.logger.mode == "online":
        require_wandb_login()
    if cfg.logger.mode != "disabled":
        loggers.append(
            QuietWandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                group=cfg.logger.group,
                tags=list(cfg.logger.tags),
                name=name,
                save_dir=str(run_dir),
                offline=cfg.logger.mode == "offline",
                config=resolved,
            )
        )
    return loggers


def require_wandb_login() -> None:
    """Online logging without credentials fails inside Lightning's fit, after the model loaded."""
    import wandb

    if not wandb.login(prompt=False, verify=False):
        raise ConfigError("logger.mode=online needs W&B credentials (run `wandb login`, or set WANDB_API_KEY); "
                          "allowed without them: logger.mode=offline (sync later with `wandb sync`) or disabled")  # fmt: skip


class QuietWandbLogger(WandbLogger):
    """Lightning's WandbLogger always passes `anonymous` to wandb.init, and W&B warns on every run
    that the setting does nothing; leaving it out is what W&B asks for."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


@contextlib.contextmanager
def finish_loggers(trainer: L.Trainer) -> Iterator[dict]:
    """Yield a dict for the run's summary; on exit, put it in W&B's summary and close the W&B run
    (marked failed if the block raised), so the next run in this process starts a fresh one."""
    summary: dict = {}
    failed = True
    try:
        yield summary
        failed = False
    finally:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                logger.experiment.summary.update(_flatten(summary))
                logger.experiment.finish(exit_code=1 if failed else 0)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
