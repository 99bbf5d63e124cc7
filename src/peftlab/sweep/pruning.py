"""optuna-integration's Lightning pruning callback, reporting once per validation.

The parent reports at step = epoch. A sweep validates every N batches inside one epoch
(`trainer.val_check_interval`), and Optuna ignores a second report at a step it already has, so
every check after the first would be lost. Here step = the number of validations so far (1, 2, ...):
the "iterations" W&B's hyperband counts, so `early_terminate.min_iter` means the same in both.
"""

from __future__ import annotations

import warnings

import optuna
from lightning.pytorch.trainer.states import TrainerFn
from optuna_integration import PyTorchLightningPruningCallback


class ValidationPruning(PyTorchLightningPruningCallback):
    def __init__(self, trial: optuna.trial.Trial, monitor: str) -> None:
        super().__init__(trial, monitor)
        self.validations = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        # The recipe's closing `trainer.validate` scores the final weights; it is not a training iteration.
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if self.is_ddp_backend:  # trainer=ddp: the parent's storage-backed protocol across ranks
            return super().on_validation_end(trainer, pl_module)
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            warnings.warn(f"{self.monitor} was not logged at this validation; nothing to prune on")
            return
        self.validations += 1
        self._trial.report(float(score), step=self.validations)
        # At the last validation, stopping saves nothing and would hide a fully trained run's metrics.
        if not _finishing(trainer) and self._trial.should_prune():
            raise optuna.TrialPruned(f"pruned at validation {self.validations} ({self.monitor}={float(score):.4f})")


def _finishing(trainer) -> bool:
    """True at the validation that ends training (max_steps reached, or the last batch of the last epoch)."""
    if 0 < trainer.max_steps <= trainer.global_step:
        return True
    return trainer.is_last_batch and trainer.current_epoch + 1 >= (trainer.max_epochs or 1)
