"""How many batches and optimizer steps a run takes, and the checks that depend on it.

Light arithmetic (no torch), shared by the recipe, the data module and the sweep's up-front check,
so a sweep can refuse a setting that would fail every trial before the first one starts.
"""

from __future__ import annotations

import math

from peftlab.config import TrainerConfig
from peftlab.errors import ConfigError


def batches_per_epoch(n_examples: int, batch_size: int, world: int) -> int:
    """Training batches each rank sees in one epoch (every rank gets an equal share)."""
    return math.ceil(math.ceil(n_examples / world) / batch_size)


def steps_per_epoch(n_examples: int, batch_size: int, world: int, accumulate: int) -> int:
    return math.ceil(batches_per_epoch(n_examples, batch_size, world) / accumulate)


def planned_steps(trainer: TrainerConfig, n_train: int, world: int) -> int:
    """Optimizer steps the run will take; AdaLoRA's schedule and the LR decay are sized by it."""
    steps = steps_per_epoch(n_train, trainer.batch_size, world, trainer.accumulate_grad_batches) * trainer.max_epochs
    return min(steps, trainer.max_steps) if trainer.max_steps > 0 else steps


def check_val_check_interval(trainer: TrainerConfig, n_train: int, world: int) -> None:
    """Lightning counts an integer val_check_interval in batches of one epoch and fails mid-setup
    when it exceeds them; say so up front, with a value that fits."""
    interval = trainer.val_check_interval
    if not isinstance(interval, int) or isinstance(interval, bool):
        return
    batches = batches_per_epoch(n_train, trainer.batch_size, world)
    if interval > batches:
        raise ConfigError(
            f"trainer.val_check_interval={interval} is more than the {batches} training batches per epoch "
            f"({n_train} examples at trainer.batch_size={trainer.batch_size}"
            + (f" on {world} devices" if world > 1 else "")
            + f"); allowed: an integer <= {batches} (e.g. trainer.val_check_interval={max(1, batches // 5)}), "
            "a fraction of an epoch in (0, 1], or null"
        )


def check_validation_shares(task_name: str, n_validation: int, world: int) -> None:
    """Each process scores its own share of the validation split (every example once); a process
    with no share would stop Lightning's setup on that rank and hang the others on a closed socket."""
    if n_validation < world:
        raise ConfigError(
            f"task {task_name}: the validation split has {n_validation} example(s), fewer than the {world} processes "
            f"that each score a share of it; allowed: at least {world} validation examples (task.max_eval_samples), "
            f"or trainer.devices={max(1, n_validation)}"
        )
