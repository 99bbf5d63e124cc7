"""What a task provides to the trainer: its data splits, how to encode them, how to batch and score them.

A new task is one module here (a `Task` subclass with its typed config, registered by name) and one
YAML in conf/task/. The trainer only talks to this interface, so sequence classification, token
classification and language modelling share it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from omegaconf import MISSING

from peftlab.errors import DataError, require
from peftlab.registry import Registry

if TYPE_CHECKING:
    from torchmetrics import MetricCollection

SPLITS = ("train", "validation")


@dataclass
class TaskConfig:
    task: str = MISSING  # registry name of the task code
    name: str = MISSING  # label in run folders and tables
    max_train_samples: Optional[int] = None  # a seeded random subset of the training split
    max_eval_samples: Optional[int] = None  # the first N evaluation examples
    max_length: int = 128  # tokens per example after truncation

    def __post_init__(self) -> None:
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"task.{key}", value, "it must be >= 1 or null for all")
        require(self.max_length >= 8, "task.max_length", self.max_length, "it must be >= 8")


class Task:
    """Base class. Subclasses read raw examples; this class subsamples them and checks they exist."""

    config_class: type[TaskConfig] = TaskConfig
    auto_model_class = "AutoModelForSequenceClassification"  # the transformers head this task trains
    main_metric = "accuracy"  # the metric tables rank by and sweeps optimise (higher is better)
    metric_names: tuple[str, ...] = ("accuracy",)  # the keys of `metrics()`, known without building them

    def __init__(self, cfg: TaskConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self._rows: dict[str, list[dict[str, Any]]] = {}

    def rows(self, split: str) -> list[dict[str, Any]]:
        """`read(split)`, read once: label inference and `examples` both need the training rows."""
        if split not in self._rows:
            self._rows[split] = self.read(split)
        return self._rows[split]

    # -- to implement --------------------------------------------------------------------------
    def read(self, split: str) -> list[dict[str, Any]]:
        """All raw examples of a split."""
        raise NotImplementedError

    def encode(self, examples: list[dict[str, Any]], tokenizer) -> list[dict[str, Any]]:
        """Token ids (unpadded) and labels, one dict per example."""
        raise NotImplementedError

    def collator(self, tokenizer):
        """Pads a list of encoded examples to the longest one in the batch."""
        raise NotImplementedError

    def metrics(self) -> MetricCollection:
        raise NotImplementedError

    def metric_inputs(self, logits, labels):
        """(predictions, targets) for `metrics()` from a batch's logits and labels."""
        raise NotImplementedError

    def model_kwargs(self) -> dict[str, Any]:
        """Extra arguments for the model's from_pretrained / config (e.g. num_labels)."""
        return {}

    # -- shared --------------------------------------------------------------------------------
    def examples(self, split: str) -> list[dict[str, Any]]:
        rows = self.rows(split)
        if not rows:
            raise DataError(f"task {self.cfg.name}: the {split} split is empty")
        if split == "train" and self.cfg.max_train_samples and self.cfg.max_train_samples < len(rows):
            rows = random.Random(self.seed).sample(rows, self.cfg.max_train_samples)
        if split != "train" and self.cfg.max_eval_samples:
            rows = rows[: self.cfg.max_eval_samples]
        return rows


def require_file(path: Path, what: str) -> Path:
    """The data-not-there message: says how to get the data."""
    if not path.is_file():
        if "data" in path.parts:
            hint = "run `dvc pull` in the project root to fetch it (or set data_dir=...)"
        else:
            hint = "check the path"
        raise DataError(f"{what} {path} does not exist; {hint}")
    return path


TASKS: Registry[type[Task]] = Registry("task")
