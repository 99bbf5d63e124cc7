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

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class MetricInfo:
    """How one of a task's metrics reads: which way is better, and whether tables print it x100 (%)."""

    name: str
    higher_is_better: bool = True
    percent: bool = True


LOSS = MetricInfo("loss", higher_is_better=False, percent=False)


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
    main_metric = "accuracy"  # the metric tables rank by and sweeps optimise
    metric_info: tuple[MetricInfo, ...] = (MetricInfo("accuracy"),)  # the keys of `metrics()`, known before torch loads
    labelled_splits: tuple[str, ...] = ("train", "validation")  # the splits with labels, which can be scored
    unlabelled_note = ""  # why a split is missing, for the error that asks for it

    @classmethod
    def check_config(cls, cfg: TaskConfig) -> None:
        """Checks of the typed config that need the task's class (its metrics), run by
        `config.validate` before torch loads; raise ConfigError."""

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

    def model_inputs(self, batch) -> dict[str, Any]:
        """What the model's forward pass gets from a batch; tasks that carry more for scoring (QA's
        example ids and offsets) leave it out here."""
        return batch

    def metric_inputs(self, outputs, batch, model) -> tuple:
        """The arguments of `metrics().update` for one batch, from the model's outputs and the batch
        (and the model itself, for tasks that generate text from it)."""
        raise NotImplementedError

    def predictions(self, metrics: MetricCollection) -> Optional[list[dict[str, Any]]]:
        """What the model answered on the split just scored, one dict per example, for the run
        folder's predictions_<split>.jsonl (None: the task writes none)."""
        return None

    def for_model(self, family: str, model_type: str) -> None:
        """Told, before encoding, the family (encoder, decoder, encoder-decoder) of the model that
        will train; raises ConfigError for one the task cannot train."""

    def auto_model_class_for(self, family: str) -> str:
        """The transformers head class this task trains on a model of this family."""
        return self.auto_model_class

    def positions_needed(self) -> int:
        """The most positions a sequence of this task takes in the model."""
        return self.cfg.max_length

    def encode_train(self, examples: list[dict[str, Any]], tokenizer) -> list[dict[str, Any]]:
        """The training split's encoding: `encode`, unless the task lays training rows out
        differently (generation's packing)."""
        return self.encode(examples, tokenizer)

    def batch_examples(self, batch):
        """The examples in a training batch (a packed row holds several): an int, or a tensor summed without a host sync."""
        return len(batch["input_ids"])

    def batch_tokens(self, batch):
        """The real (not padding) tokens of a training batch, as a tensor: summed without a host sync."""
        mask = batch.get("attention_mask")
        return mask.sum() if mask is not None else batch["input_ids"].new_tensor(batch["input_ids"].numel())

    def loss_weight(self, batch) -> int:
        """What a batch's mean loss is averaged over: its sequences (token tasks: their labelled tokens)."""
        return len(batch["input_ids"])

    def split_file(self, split: str) -> Optional[Path]:
        """The file a split is read from, for the evaluation record's md5 (None: not one file)."""
        return None

    def model_kwargs(self) -> dict[str, Any]:
        """Extra arguments for the model's from_pretrained / config (e.g. num_labels)."""
        return {}

    # -- shared --------------------------------------------------------------------------------
    def check_labels(self, labels: list[str], found, kind: str = "label") -> None:
        """Every (label, where it was read) in `found` is in the label set, which has at least two."""
        known = set(labels)
        for label, where in found:
            if label not in known:
                raise DataError(f"{where} has {kind} {label!r}, which is not in the label set {labels}")
        if len(labels) < 2:
            raise DataError(f"task {self.cfg.name}: needs at least 2 {kind}s, found {labels}")

    @classmethod
    def metric_names(cls) -> tuple[str, ...]:
        return tuple(m.name for m in cls.metric_info)

    @classmethod
    def info(cls, name: str) -> Optional[MetricInfo]:
        """How metric `name` (or the loss) reads; None when the task does not compute it."""
        return next((m for m in (*cls.metric_info, LOSS) if m.name == name), None)

    def examples(self, split: str) -> list[dict[str, Any]]:
        if split not in self.labelled_splits:
            raise DataError(
                f"task {self.cfg.name} has no labelled {split} split{self.unlabelled_note}; "
                f"allowed: {', '.join(self.labelled_splits)}"
            )
        rows = self.rows(split)
        if not rows:
            raise DataError(f"task {self.cfg.name}: the {split} split is empty")
        if split == "train" and self.cfg.max_train_samples and self.cfg.max_train_samples < len(rows):
            rows = random.Random(self.seed).sample(rows, self.cfg.max_train_samples)
        if split != "train" and self.cfg.max_eval_samples:
            rows = rows[: self.cfg.max_eval_samples]
        return rows


@dataclass
class FilesConfig(TaskConfig):
    """A task over the user's own files."""

    train_file: str = MISSING
    validation_file: str = MISSING
    test_file: Optional[str] = None  # a labelled test split, for `peftlab.evaluate RUN split=test`


class UserFiles:
    """Mixin for a task whose config is a FilesConfig: each split is a file the user names, and
    the test split exists when task.test_file is set."""

    unlabelled_note = " (set task.test_file to score one)"

    @property
    def labelled_splits(self) -> tuple[str, ...]:
        return tuple(split for split in SPLITS if getattr(self.cfg, f"{split}_file", None))

    def split_file(self, split: str) -> Optional[Path]:
        name = getattr(self.cfg, f"{split}_file", None)
        return Path(name) if name else None

    def file_description(self, split: str) -> str:
        return f"task.{split}_file"  # the key the user set


def require_label_set(key: str, labels: Optional[list], what: str = "labels") -> None:
    """A label set given in config: at least two, no duplicates (they would be classes that never occur)."""
    if labels is not None:
        names = [str(label) for label in labels]
        require(len(names) >= 2 and len(set(names)) == len(names), key, labels,
                f"give at least 2 distinct {what}, in index order, or null to take them from train_file")  # fmt: skip


def require_file(path: Path, what: str) -> Path:
    """The data-not-there message: says how to get the data."""
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder; allowed: a file")
    if not path.is_file():
        if "data" in path.parts:
            hint = "run `dvc pull` in the project root to fetch it (or set data_dir=...)"
        else:
            hint = "check the path"
        raise DataError(f"{what} {path} does not exist; {hint}")
    return path


TASKS: Registry[type[Task]] = Registry("task")
