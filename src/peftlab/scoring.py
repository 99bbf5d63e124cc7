"""The one evaluation path: a task's metrics and its mean loss over a split.

Training's validation (`PeftModule`) and `python -m peftlab.evaluate` both feed batches to a
`Scorer`, so on the same split and batches their numbers are bit-identical. The task decides how
a batch is scored (`model_inputs`, `metric_inputs`) and what the loss is averaged over (`loss_weight`);
the loss is the task's alone (`Method.task_loss_only`), so it compares across methods.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torchmetrics import MeanMetric

from peftlab.methods import Method
from peftlab.tasks import Task


class Scorer(nn.Module):
    """A module, so Lightning moves its metric states to the device and syncs them across ranks."""

    def __init__(self, task: Task, method: Method) -> None:
        super().__init__()
        self.task, self.method = task, method
        self.metrics = task.metrics()
        self.loss = MeanMetric()

    def _apply(self, fn, recurse=True):
        """Move the metric states with the module, never recast them. Lightning's bf16-true and
        16-true plugins cast the whole LightningModule with `.to(dtype=...)`, which torchmetrics
        (1.9) passes on to metric states: the loss and the correlations then summed in bf16, so
        training's numbers were rounded to 8 bits and `peftlab.evaluate`'s (fp32 states) were not."""
        device = fn(torch.zeros(())).device
        self.metrics.to(device)
        self.loss.to(device)
        return self

    def update(self, model, batch) -> None:
        """Score one batch: the model's forward pass on what the task feeds it, then the task's metrics."""
        with self.method.task_loss_only(model):
            outputs = model(**self.task.model_inputs(batch))
        self.loss.update(outputs.loss, weight=self.task.loss_weight(batch))
        self.metrics.update(*self.task.metric_inputs(outputs, batch, model))

    def compute(self) -> dict[str, float]:
        """Every metric and the loss, over all the batches (of every rank) since the last reset."""
        values = {name: float(value) for name, value in self.metrics.compute().items()}
        values["loss"] = float(self.loss.compute())
        return values

    def predictions(self) -> Optional[list[dict[str, Any]]]:
        """The task's predictions on the batches since the last reset (generation tasks), or None."""
        return self.task.predictions(self.metrics)

    def reset(self) -> None:
        self.metrics.reset()
        self.loss.reset()


def precision_plugin(precision: str, device: str = "cpu"):
    """Lightning's precision plugin for a run's `trainer.precision`, so scoring saved weights
    outside the Trainer casts and autocasts as training's validation did."""
    from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

    if precision.endswith("-mixed"):
        # On CPU Lightning runs 16-mixed as bf16-mixed (CPU autocast has no float16).
        return MixedPrecision("bf16-mixed" if device == "cpu" else precision, device)
    if precision in ("bf16-true", "16-true"):
        return HalfPrecision(precision)
    if precision == "64-true":
        return DoublePrecision()
    return Precision()
