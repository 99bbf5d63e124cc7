"""Experiment loggers: a CSV log always, W&B (offline unless told otherwise) when enabled."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from peftlab.config import Config


def build_loggers(cfg: Config, run_dir: Path, resolved: dict) -> list[Logger]:
    name = f"{cfg.task.name}-{cfg.model.name}-{cfg.peft.name}-r{cfg.rank}-s{cfg.seed}"
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version="logs")]
    if cfg.logger.mode != "disabled":
        loggers.append(
            WandbLogger(
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
