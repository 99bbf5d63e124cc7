"""Sequence regression (STS-B): one output, mean-squared-error loss, Pearson and Spearman correlation.

transformers' sequence-classification heads regress when `num_labels=1` and the labels are floats.
"""

from __future__ import annotations

from typing import Any, Optional

from peftlab.errors import DataError
from peftlab.tasks.base import MetricInfo, Task
from peftlab.tasks.text_classification import encode_texts


class TextRegressionTask(Task):
    """Subclasses implement `read(split)` returning {"texts": (a,) or (a, b), "label": "<number>"} rows."""

    main_metric = "pearson"
    metric_info = (MetricInfo("pearson"), MetricInfo("spearman"))
    score_range: Optional[tuple[float, float]] = None  # scores outside it are data errors

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression"}

    def examples(self, split: str) -> list[dict[str, Any]]:
        rows = super().examples(split)
        for number, row in enumerate(rows, start=1):
            try:
                score = float(row["label"])
            except ValueError:
                raise DataError(f"task {self.cfg.name}: {split} example {number} has score {row['label']!r}, not a number") from None
            low, high = self.score_range or (float("-inf"), float("inf"))
            if not low <= score <= high:
                raise DataError(f"task {self.cfg.name}: {split} example {number} has score {score}, outside [{low}, {high}]")
        return rows

    def encode(self, examples, tokenizer):
        return encode_texts(examples, tokenizer, self.cfg.max_length, [float(row["label"]) for row in examples])

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def metric_inputs(self, outputs, batch, model):
        return outputs.logits.squeeze(-1).float(), batch["labels"].float()

    def metrics(self):
        from torchmetrics import MetricCollection
        from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

        return MetricCollection({"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef()})
