"""The progress bar: Lightning's rich bar, counting the batches the run will actually train."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class PlannedStepsProgressBar(RichProgressBar):
    """Lightning sizes the epoch bar by the epoch's batches, so a run capped by trainer.max_steps
    ends at "500/2105" and looks cut short. Here the total is what is left of the plan."""

    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        epoch_batches = trainer.num_training_batches
        if trainer.max_steps is None or trainer.max_steps < 0:
            return epoch_batches
        remaining = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
        return max(0, min(epoch_batches, remaining))

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version id: the run folder already names the run
        return metrics
