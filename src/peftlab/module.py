"""The LightningModule: one model with its PEFT method, trained with the method's optimizer (AdamW) and a linear warm-up/decay."""

from __future__ import annotations

import lightning as L
import torch

from peftlab.architectures import NO_DECAY
from peftlab.config import TrainerConfig
from peftlab.errors import TrainingError
from peftlab.methods import Method
from peftlab.scoring import Scorer
from peftlab.tasks import Task


class PeftModule(L.LightningModule):
    def __init__(self, model, method: Method, task: Task, lr: float, trainer_cfg: TrainerConfig, total_steps: int,
                 no_decay: tuple[str, ...] = NO_DECAY):  # fmt: skip
        super().__init__()
        self.model, self.method, self.task = model, method, task
        self.lr, self.trainer_cfg, self.total_steps = lr, trainer_cfg, total_steps
        self.no_decay = no_decay  # parameter-name suffixes without weight decay (the architecture's)
        self.scorer = Scorer(task, method)  # the evaluation path `peftlab.evaluate` runs too
        self.train_samples = 0  # this rank's count of examples
        self.train_tokens = 0  # and of their real (not padding) tokens
        self.last_eval: tuple[int, dict[str, float]] | None = None  # (global step, metrics)
        self.last_predictions: list[dict] | None = None  # what a generation task's last evaluation wrote

    def training_step(self, batch, batch_idx):
        # The model computes the loss itself, so method-specific terms (AdaLoRA's orthogonal
        # regulariser) are included as the library defines them.
        loss = self.model(**self.task.model_inputs(batch)).loss
        if not torch.isfinite(loss):
            raise TrainingError(diverged(loss.item(), self.global_step + 1, self.total_steps, self.lr, self.trainer_cfg))
        self.train_samples += self.task.batch_examples(batch)
        self.train_tokens += self.task.batch_tokens(batch)  # a tensor: no host sync per step
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch, batch_idx):
        self.scorer.update(self.model, batch)

    def on_validation_epoch_end(self):
        # compute() gathers the metric states of every rank: each example counted once.
        values = self.scorer.compute()
        self.last_predictions = self.scorer.predictions()
        self.scorer.reset()
        self.last_eval = (self.global_step, values)
        self.log_dict({f"val/{k}": v for k, v in values.items()}, prog_bar=True, rank_zero_only=True)

    def configure_optimizers(self):
        from transformers import get_linear_schedule_with_warmup

        # The method builds it: most take AdamW, LoRA+ gives B its own learning rate.
        optimizer = self.method.build_optimizer(self.model, self.lr, self.trainer_cfg.weight_decay, self.no_decay)
        warmup = int(self.trainer_cfg.warmup_ratio * self.total_steps)
        schedule = get_linear_schedule_with_warmup(optimizer, warmup, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Gradients are zeroed only when the next step starts, so they are still here.
        self.method.after_optimizer_step(self.model, self.global_step)


def diverged(loss: float, step: int, total_steps: int, lr: float, t: TrainerConfig) -> str:
    """The divergence message: where it happened and the settings that usually cure it."""
    tries = [f"a lower learning rate (lr={lr / 10:g}; it is {lr:g})"]
    if t.gradient_clip_val is None:
        tries.append("gradient clipping (trainer.gradient_clip_val=1.0)")
    if t.precision != "32-true":
        tries.append(f"full precision (trainer.precision=32-true; it is {t.precision})")
    if t.warmup_ratio == 0:
        tries.append("a warm-up (trainer.warmup_ratio=0.06)")
    return f"training diverged: the loss is {loss} at step {step} of {total_steps}; try " + ", or ".join(tries)
