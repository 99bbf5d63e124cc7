"""Your own classification data: CSV, TSV or JSON Lines files with text column(s) and a label column."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import MISSING

from peftlab.errors import DataError, require
from peftlab.tasks.base import TASKS, TaskConfig, require_file
from peftlab.tasks.text_classification import TextClassificationTask

FORMATS = (".csv", ".tsv", ".jsonl", ".json")


@dataclass
class CsvConfig(TaskConfig):
    train_file: str = MISSING  # .csv, .tsv, or .jsonl (one JSON object per line)
    validation_file: str = MISSING
    text_columns: list[str] = field(default_factory=lambda: ["text"])  # one column, or two for a sentence pair
    label_column: str = "label"
    labels: Optional[list[str]] = None  # the label set in index order; null = every label in train_file

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.text_columns) in (1, 2), "task.text_columns", self.text_columns, "give 1 or 2 columns")
        if self.labels is not None:
            labels = [str(label) for label in self.labels]
            require(len(labels) >= 2 and len(set(labels)) == len(labels), "task.labels", self.labels,
                    "give at least 2 distinct labels, in index order, or null to take them from train_file")  # fmt: skip
        for key in ("train_file", "validation_file"):
            suffix = Path(getattr(self, key)).suffix.lower()
            require(suffix in FORMATS, f"task.{key}", getattr(self, key), f"allowed formats: {', '.join(FORMATS)}")


@TASKS.register("csv")
class CsvFiles(TextClassificationTask):
    config_class = CsvConfig

    @property
    def given_labels(self):
        return self.cfg.labels

    def read(self, split):
        key = "train_file" if split == "train" else "validation_file"
        path = require_file(Path(getattr(self.cfg, key)), f"task.{key}")
        records = _read_records(path)
        wanted = [*self.cfg.text_columns, self.cfg.label_column]
        for number, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise DataError(f"{path} row {number} is not a record with named columns (JSON Lines: one object per line)")
            missing = [c for c in wanted if c not in record]
            if missing:
                raise DataError(
                    f"{path} row {number} has no column {missing[0]!r}; its columns are {list(record)} "
                    f"(set task.text_columns / task.label_column)"
                )
            # A short CSV row or a JSON null would otherwise become the text or the class "None".
            empty = [c for c in wanted if record[c] is None or (c == self.cfg.label_column and str(record[c]).strip() == "")]
            if empty:
                raise DataError(f"{path} row {number} has no value in column {empty[0]!r}; every row needs its text and its label")
        return [
            {"texts": tuple(str(r[c]) for c in self.cfg.text_columns), "label": str(r[self.cfg.label_column])}
            for r in records
        ]


def _read_records(path: Path) -> list[dict]:
    try:
        return _parse_records(path)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            "allowed: UTF-8 files (convert it, e.g. iconv -f latin1 -t utf-8 IN > OUT)"
        ) from None


def _parse_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    with path.open(newline="", encoding="utf-8") as f:
        if suffix in (".csv", ".tsv"):
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        records = []
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path} line {number}: not JSON Lines ({err.msg})") from None
        return records
