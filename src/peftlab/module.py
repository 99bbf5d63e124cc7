"""The LightningModule: one model with its PEFT method, trained with the method's optimizer (AdamW) and a linear warm-up/decay."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from peftlab.architectures import NO_DECAY
from peftlab.config import TrainerConfig
from peftlab.errors import ConfigError, TrainingError
from peftlab.methods import Method
from peftlab.scoring import Scorer
from peftlab.sharding import unwrapped_name
from peftlab.tasks import Task


LOSS_CHECK_EVERY = 10  # training batches between reads of the training loss's finiteness


class PeftModule(L.LightningModule):
    def __init__(self, model, method: Method, task: Task, lr: float, trainer_cfg: TrainerConfig, total_steps: int,
                 no_decay: tuple[str, ...] = NO_DECAY):  # fmt: skip
        super().__init__()
        self.model, self.method, self.task = model, method, task
        self.lr, self.trainer_cfg, self.total_steps = lr, trainer_cfg, total_steps
        self.no_decay = no_decay  # parameter-name suffixes without weight decay (the architecture's)
        self.scorer = Scorer(task, method)  # the evaluation path `peftlab.evaluate` runs too
        # This rank's count of examples and of their real (not padding) tokens: tensors where the
        # batch gives them, summed on the device, so a step never waits to read them.
        self.train_samples: int | torch.Tensor = 0
        self.train_tokens: int | torch.Tensor = 0
        self.loss_watch = LossWatch()
        self.last_eval: tuple[int, dict[str, float]] | None = None  # (global step, metrics)
        self.last_predictions: list[dict] | None = None  # what a generation task's last evaluation wrote
        # Resumable checkpoints hold only what trains (see on_save_checkpoint): the frozen base is
        # rebuilt from the model, so loading one must not ask for its weights.
        self.strict_loading = False
        self.train_time_before = 0.0  # seconds trained by the interrupted run(s) this one resumes
        self._fit_started = 0.0  # set when fitting starts, before any checkpoint
        self._resumed_rng: dict | None = None  # RNG states to restore before the first resumed step

    def on_train_start(self):
        self._fit_started = time.perf_counter()

    def on_train_batch_start(self, batch, batch_idx):
        # Restored here, not on load: building the data iterator after the load draws from torch's
        # generator, where the interrupted run drew at its epoch's start.
        if self._resumed_rng is not None:
            set_rng_states(self._resumed_rng)
            self._resumed_rng = None

    def trainable(self) -> dict[str, torch.Tensor]:
        """The trainable tensors under their keys in Lightning's checkpoint (this module's state dict)."""
        return {f"model.{unwrapped_name(n)}": p for n, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint):
        trainable = self.trainable()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["peftlab"] = {
            "train_samples": int(self.train_samples),
            "train_tokens": int(self.train_tokens),
            "train_time_s": self.train_time_before + time.perf_counter() - self._fit_started,
            "last_eval": self.last_eval,
            "rng": rng_states(),
            "method": self.method.resume_state(self.model),
        }

    def on_load_checkpoint(self, checkpoint):
        check_same_weights(checkpoint["state_dict"], self.trainable())
        state = checkpoint["peftlab"]
        self.train_samples, self.train_tokens = state["train_samples"], state["train_tokens"]
        self.train_time_before, self.last_eval = state["train_time_s"], state["last_eval"]
        self._resumed_rng = state["rng"]
        self.method.load_resume_state(self.model, state["method"])

    def training_step(self, batch, batch_idx):
        # The model computes the loss itself, so method-specific terms (AdaLoRA's orthogonal
        # regulariser) are included as the library defines them.
        loss = self.model(**self.task.model_inputs(batch)).loss
        self.loss_watch.update(loss, self.global_step + 1)
        self.train_samples += self.task.batch_examples(batch)
        self.train_tokens += self.task.batch_tokens(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if (batch_idx + 1) % LOSS_CHECK_EVERY == 0:
            self.check_loss()

    def on_validation_start(self):
        self.check_loss()  # before a validation reports (and a sweep prunes on) a diverged model's scores

    def on_train_end(self):
        self.check_loss()

    def check_loss(self) -> None:
        """Fail the run at the first non-finite training loss seen so far, naming its step."""
        bad = self.loss_watch.first_bad()
        if bad is not None:
            step, loss = bad
            raise TrainingError(diverged(loss, step, self.total_steps, self.lr, self.trainer_cfg))

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
        # Fused unless fp16's GradScaler is on: the gradients it scales are clipped before the step.
        fused = getattr(self.trainer.precision_plugin, "scaler", None) is None
        optimizer = self.method.build_optimizer(self.model, self.lr, self.trainer_cfg.weight_decay, self.no_decay, fused)
        warmup = int(self.trainer_cfg.warmup_ratio * self.total_steps)
        schedule = get_linear_schedule_with_warmup(optimizer, warmup, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Lightning's mixed-precision plugin refuses to clip for a fused optimizer, because of fp16's
        # GradScaler; bf16 has no scaler, so its gradients are the true ones and are clipped as they are.
        plugin = self.trainer.precision_plugin
        # Whole gradients on each process (not FSDP's or DeepSpeed's shards, whose plugins clip their own way).
        whole = type(plugin) in (Precision, MixedPrecision) and getattr(plugin, "scaler", None) is None
        if gradient_clip_val and whole and (gradient_clip_algorithm or "norm") == "norm" and divides_gradients(optimizer):
            clip_in_the_step(optimizer, gradient_clip_val)
            return
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, gradient_clip_algorithm or "norm")
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Gradients are zeroed only when the next step starts, so they are still here.
        self.method.after_optimizer_step(self.model, self.global_step)


class LossWatch:
    """The first step whose training loss is not finite, and that loss, kept on the loss's device:
    reading the loss back every step would make each GPU step wait for the one before it. The
    module reads it every LOSS_CHECK_EVERY batches, before each validation and when training ends."""

    def __init__(self) -> None:
        self.step: torch.Tensor | None = None  # -1 while every loss was finite
        self.loss: torch.Tensor | None = None

    def update(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().float()
        if self.step is None:
            self.step, self.loss = torch.full((), -1, device=loss.device), torch.zeros((), device=loss.device)
        first = ~torch.isfinite(loss) & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.loss = torch.where(first, loss, self.loss)

    def first_bad(self) -> tuple[int, float] | None:
        if self.step is None or int(self.step) < 0:
            return None
        return int(self.step), float(self.loss)


def rng_states() -> dict:
    """Every generator a step draws from (dropout, shuffles), as a resumable checkpoint keeps them."""
    import random

    import numpy as np

    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def check_same_weights(saved: dict, trainable: dict) -> None:
    """A checkpoint must hold exactly the weights this run trains, at their shapes; otherwise it
    was written by another method, rank or model."""
    missing, unexpected = sorted(trainable.keys() - saved.keys()), sorted(saved.keys() - trainable.keys())
    reshaped = sorted(k for k in saved.keys() & trainable.keys() if tuple(saved[k].shape) != tuple(trainable[k].shape))
    if missing or unexpected or reshaped:
        first = (missing or unexpected or reshaped)[0].removeprefix("model.")
        raise ConfigError(
            f"resume: the checkpoint was written by another config: it holds {len(saved)} trained tensors, this run trains "
            f"{len(trainable)} ({len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape, "
            f"e.g. {first}); allowed: the same model, method and settings as the run that wrote it, or resume=false"
        )


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


def divides_gradients(optimizer) -> bool:
    """torch's fused Adam / AdamW: they divide each gradient by `optimizer.grad_scale` in the pass
    that updates the weights (GradScaler sets it to unscale fp16 gradients), and write it back."""
    return type(optimizer) in (torch.optim.Adam, torch.optim.AdamW) and bool(optimizer.defaults.get("fused"))


def clip_in_the_step(optimizer, max_norm: float) -> None:
    """Clip to a total gradient norm of `max_norm` inside the fused step: the same coefficient as
    `torch.nn.utils.clip_grad_norm_`, applied as the step's `grad_scale` (its inverse) instead of a
    pass that multiplies every gradient. For full FT of MiniLM that pass, 47 MB for the embedding's
    gradient alone, was 4.3 ms of a 139 ms step (profiled). The gradients left after the step are the clipped
    ones (AdaLoRA reads them), and no value is read back to the host."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        optimizer.grad_scale = None  # nothing to clip, and no scale left from a step before
        return
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # clip_grad_norm_'s
    optimizer.grad_scale = (1.0 / coefficient).to(torch.float32)
