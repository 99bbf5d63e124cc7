"""Task metrics that torchmetrics does not have as such, as torchmetrics `Metric`s (tensor states,
so DDP gathers them). Imported only when a task builds its metrics: these modules load torch."""
