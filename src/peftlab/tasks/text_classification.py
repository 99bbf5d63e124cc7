"""Sequence classification of a sentence or a sentence pair: the shared part of SST-2, CSV files and GLUE."""

from __future__ import annotations

from functools import cached_property
from typing import Any, Optional

from peftlab.tasks.base import MetricInfo, Task


class TextClassificationTask(Task):
    """Subclasses implement `read(split)` returning {"texts": (a,) or (a, b), "label": str} rows."""

    given_labels: Optional[list[str]] = None  # the label set; None = every label seen in training
    metric_info = (MetricInfo("accuracy"), MetricInfo("f1"))

    @cached_property
    def labels(self) -> list[str]:
        if self.given_labels:
            return [str(label) for label in self.given_labels]
        seen = {row["label"] for row in self.rows("train")}
        # numeric labels sort as numbers, so "2" < "10"
        return sorted(seen, key=lambda x: (0, float(x), x) if _is_number(x) else (1, 0, x))

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_labels": self.num_labels}

    def examples(self, split: str) -> list[dict[str, Any]]:
        rows = super().examples(split)
        where = f"task {self.cfg.name}: {split} example"
        self.check_labels(self.labels, ((row["label"], f"{where} {n}") for n, row in enumerate(rows, start=1)))
        return rows

    def encode(self, examples, tokenizer):
        index = {label: i for i, label in enumerate(self.labels)}
        return encode_texts(examples, tokenizer, self.cfg.max_length, [index[row["label"]] for row in examples])

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def metric_inputs(self, outputs, batch, model):
        return outputs.logits.argmax(dim=-1), batch["labels"]

    def metrics(self):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import Accuracy, F1Score

        if self.num_labels == 2:
            return MetricCollection({"accuracy": Accuracy(task="binary"), "f1": F1Score(task="binary")})
        n = self.num_labels
        return MetricCollection(
            {
                "accuracy": Accuracy(task="multiclass", num_classes=n),
                "f1": F1Score(task="multiclass", num_classes=n, average="macro"),
            }
        )


def encode_texts(examples: list[dict[str, Any]], tokenizer, max_length: int, labels: list) -> list[dict[str, Any]]:
    """Token ids of each example's sentence (or sentence pair), unpadded, with its label."""
    columns = list(zip(*(row["texts"] for row in examples)))
    encoded = tokenizer(*columns, truncation=True, max_length=max_length)
    return [{**{k: encoded[k][i] for k in encoded.keys()}, "labels": label} for i, label in enumerate(labels)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
