"""Your own classification data: CSV, TSV, JSON Lines (or a .json array) files with text column(s) and a label column."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


from peftlab.errors import DataError, require
from peftlab.tasks.base import TASKS, FilesConfig, UserFiles, require_file, require_label_set
from peftlab.tasks.text_classification import TextClassificationTask

FORMATS = (".csv", ".tsv", ".jsonl", ".json")


@dataclass
class CsvConfig(FilesConfig):  # train_file, validation_file, test_file: .csv, .tsv, or .jsonl (one JSON object per line)
    text_columns: list[str] = field(default_factory=lambda: ["text"])  # one column, or two for a sentence pair
    label_column: str = "label"
    labels: Optional[list[str]] = None  # the label set in index order; null = every label in train_file

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.text_columns) in (1, 2), "task.text_columns", self.text_columns, "give 1 or 2 columns")
        require_label_set("task.labels", self.labels)
        require(self.label_column not in self.text_columns, "task.label_column", self.label_column,
                f"it must not be one of task.text_columns {list(self.text_columns)}: the labels would be the texts")  # fmt: skip
        for key in ("train_file", "validation_file", "test_file"):
            if getattr(self, key) is None:
                continue
            suffix = Path(getattr(self, key)).suffix.lower()
            require(suffix in FORMATS, f"task.{key}", getattr(self, key), f"allowed formats: {', '.join(FORMATS)}")


@TASKS.register("csv")
class CsvFiles(UserFiles, TextClassificationTask):
    config_class = CsvConfig

    @property
    def given_labels(self):
        return self.cfg.labels

    def read(self, split):
        path = require_file(self.split_file(split), self.file_description(split))
        records = read_records(path)
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
            if None in record:  # csv.DictReader files the fields past the header under None
                raise DataError(f"{path} row {number} has more fields than the header's {len(record) - 1}")
            # A short CSV row, a JSON null or a list would otherwise become the text or the class "None".
            empty = [c for c in wanted if record[c] is None or str(record[c]).strip() == ""]
            if empty:
                raise DataError(f"{path} row {number} has no value in column {empty[0]!r}; every row needs its text and its label")
            odd = [c for c in wanted if not isinstance(record[c], (str, int, float))]  # a JSON list or object
            if odd:
                raise DataError(f"{path} row {number}: column {odd[0]!r} holds {type(record[odd[0]]).__name__} {record[odd[0]]!r}; allowed: text or a number")
        return [
            {"texts": tuple(str(r[c]) for c in self.cfg.text_columns), "label": str(r[self.cfg.label_column])}
            for r in records
        ]


def read_records(path: Path) -> list[dict]:
    """The records of a CSV, TSV, JSON Lines or JSON-array file; one DataError line for a malformed one."""
    try:
        return _parse_records(path)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            "allowed: UTF-8 files (convert it, e.g. iconv -f latin1 -t utf-8 IN > OUT)"
        ) from None


def _parse_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name
    with path.open(newline="", encoding="utf-8-sig") as f:
        if suffix in (".csv", ".tsv"):
            csv.field_size_limit(2**31 - 1)  # long documents are data, not an error (the default is 128 kB)
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            header = reader.fieldnames or []
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise DataError(f"{path}: the header names column {repeated[0]!r} more than once; allowed: distinct column names")
            try:
                return list(reader)
            except csv.Error as err:
                raise DataError(f"{path} line {reader.line_num}: not valid {suffix[1:].upper()} ({err})") from None
        text = f.read()
    if suffix == ".json" and text.lstrip().startswith("["):  # a .json file may be one JSON array of records
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {err.lineno}: not a JSON array of records ({err.msg})") from None
    records = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {number}: not JSON Lines ({err.msg})") from None
    return records
