"""GLUE beyond SST-2, from data/glue: CoLA, MRPC and RTE (classification) and STS-B (regression).

Each task is a few declarations on `GlueTask`: its folder, which columns hold the text and the
label, its label set, and its metrics as GLUE defines them (CoLA: Matthews correlation; MRPC:
accuracy and F1 of the paraphrase class; RTE: accuracy; STS-B: Pearson and Spearman correlation).
GLUE's test splits carry no labels, so only train and validation can be scored.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from omegaconf import II

from peftlab.errors import DataError
from peftlab.tasks.base import TASKS, MetricInfo, Task, TaskConfig, require_file
from peftlab.tasks.text_classification import TextClassificationTask
from peftlab.tasks.text_regression import TextRegressionTask

FILES = {"train": "train.tsv", "validation": "dev.tsv"}
Column = Union[int, str]  # a header name, or a position (negative counts from the end)


@dataclass
class GlueConfig(TaskConfig):
    data_dir: str = II("data_dir") + "/glue"  # holds one folder per task (CoLA/, MRPC/, ...)


class GlueTask(Task):
    """Reads a GLUE TSV split into {"texts": (...), "label": str} rows."""

    config_class = GlueConfig
    folder: str = ""  # under data_dir
    has_header = True
    text_columns: tuple[Column, ...] = ()
    label_column: Column = "label"
    unlabelled_note = " (GLUE's test labels are not public)"

    def split_file(self, split):
        return Path(self.cfg.data_dir) / self.folder / FILES[split]

    def read(self, split):
        path = require_file(self.split_file(split), f"GLUE {self.folder} {split} file")
        with path.open(newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        header = lines.pop(0) if self.has_header and lines else []
        positions = [self._position(c, header, path) for c in (*self.text_columns, self.label_column)]
        rows = []
        for number, line in enumerate(lines, start=2 if header else 1):
            try:
                *texts, label = (line[p] for p in positions)
            except IndexError:
                raise DataError(f"{path} line {number} has {len(line)} columns; a {self.folder} row has at least {max(positions) + 1}") from None
            rows.append({"texts": tuple(t.strip() for t in texts), "label": label.strip()})
        return rows

    @staticmethod
    def _position(column: Column, header: list[str], path: Path) -> int:
        if isinstance(column, int):
            return column
        if column not in header:
            raise DataError(f"{path} has no column {column!r}; its header is {header}")
        return header.index(column)


@TASKS.register("cola")
class Cola(GlueTask, TextClassificationTask):
    """Corpus of Linguistic Acceptability: is the sentence grammatical? No header: source, label, -, sentence."""

    folder, has_header, text_columns, label_column = "CoLA", False, (3,), 1
    given_labels = ["0", "1"]
    main_metric = "mcc"
    metric_info = (MetricInfo("mcc"), MetricInfo("accuracy"))

    def metrics(self):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import BinaryAccuracy, BinaryMatthewsCorrCoef

        return MetricCollection({"mcc": BinaryMatthewsCorrCoef(), "accuracy": BinaryAccuracy()})


@TASKS.register("mrpc")
class Mrpc(GlueTask, TextClassificationTask):
    """Microsoft Research Paraphrase Corpus: are the two sentences paraphrases (label 1)?"""

    folder, text_columns, label_column = "MRPC", ("#1 String", "#2 String"), "Quality"
    given_labels = ["0", "1"]  # accuracy and F1 of the paraphrase class, the default binary metrics


@TASKS.register("rte")
class Rte(GlueTask, TextClassificationTask):
    """Recognising Textual Entailment: does sentence1 entail sentence2?"""

    folder, text_columns = "RTE", ("sentence1", "sentence2")
    given_labels = ["entailment", "not_entailment"]  # GLUE's index order
    metric_info = (MetricInfo("accuracy"),)

    def metrics(self):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import BinaryAccuracy

        return MetricCollection({"accuracy": BinaryAccuracy()})


@TASKS.register("stsb")
class Stsb(GlueTask, TextRegressionTask):
    """Semantic Textual Similarity Benchmark: a similarity score in [0, 5] for a sentence pair.
    Its TSV has ten columns; sentence1, sentence2 and score are the last three."""

    folder, text_columns, label_column = "STS-B", (-3, -2), -1
    score_range = (0.0, 5.0)
