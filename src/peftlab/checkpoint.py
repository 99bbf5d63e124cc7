"""Resumable checkpoints: what trains, every N optimizer steps, written atomically.

The file is Lightning's own checkpoint (optimizer, scheduler, loop progress, the training loader's
position), with the model's state cut down to its trainable tensors by `PeftModule.on_save_checkpoint`,
which adds the RNG states and the method's own state (AdaLoRA's budget). The frozen base is never
in it: a resumed run rebuilds the base from the model exactly as the interrupted one did.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from peftlab.resume import checkpoint_file


class TrainableCheckpoint(Callback):
    """Every `every` optimizer steps, replace the run folder's checkpoint with the current state."""

    def __init__(self, run_dir: Path, every: int) -> None:
        self.path, self.every = checkpoint_file(run_dir), every
        self.last_saved = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last_saved = trainer.global_step  # a resumed run does not rewrite the checkpoint it started from

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        # Once per optimizer step: with gradient accumulation several batches end on one step.
        if step != self.last_saved and step % self.every == 0:
            self.last_saved = step
            save_atomically(trainer, self.path)


def save_atomically(trainer: L.Trainer, path: Path) -> None:
    """A temporary file beside the checkpoint, synced, then renamed over it: a kill at any moment
    leaves the previous checkpoint or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    if trainer.is_global_zero:
        path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(tmp, weights_only=False)  # every rank takes part; rank 0 writes
    if trainer.is_global_zero:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a power cut
        finally:
            os.close(folder)
