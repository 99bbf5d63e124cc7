"""What every PEFT method shares: a typed config and the hooks the trainer calls.

Each method lives in its own module, registered by name in `METHODS`; `peft=<option>` picks the
YAML in `conf/peft/`, whose `method:` key names the module. Heavy libraries (torch, peft) are
imported inside functions so that a bad config fails before they load.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from omegaconf import MISSING

from peftlab.errors import DataError, require
from peftlab.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from peftlab.architectures import Architecture

WEIGHTS_FILE = "model.safetensors"


@dataclass
class MethodConfig:
    """Fields every method has."""

    method: str = MISSING  # registry name of the code that applies it (lora, adalora, peft, ...)
    name: str = MISSING  # label in run folders and tables (lora, ia3, ...)
    lr: float = 1e-4  # this method's default learning rate; the top-level `lr=` overrides it

    def __post_init__(self) -> None:
        require(0 < self.lr < float("inf"), "peft.lr", self.lr, "it must be > 0 and finite")

    def label(self) -> str:
        """The run's label in folders and tables: the name, with the rank or width of methods that
        have one (lora-r8), read from the method's own settings (peft.r, not the `rank` shortcut)."""
        return self.name


class Method:
    """How one method changes a model. Subclasses override `apply`, and `save`/`load` if needed."""

    config_class: type[MethodConfig] = MethodConfig
    trains = True  # False: nothing is trained, the model is scored as loaded (zero-shot)

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    def check_run(self, cfg) -> None:
        """Raise ConfigError for a run this method cannot make (QLoRA off CUDA); called by
        `config.validate` with the typed Config, before torch or the model loads."""

    def load_options(self) -> dict[str, Any]:
        """Extra `from_pretrained` arguments the base model loads with (QLoRA's 4-bit quantisation)."""
        return {}

    def check_task(self, task) -> None:
        """Raise ConfigError for a task this method cannot train (packed rows under prompt tuning);
        called once the task knows its model's family, before the data is read."""

    def virtual_tokens(self) -> int:
        """Positions the method prepends to every input (prompt tuning), for the model's position limit."""
        return 0

    def check(self, model: nn.Module, arch: Architecture) -> None:
        """Raise ConfigError for settings this model cannot take (a rank above its layers' size, a
        target that matches nothing); called before `apply`, once the model is known."""

    def apply(self, model: nn.Module, arch: Architecture, total_steps: int) -> nn.Module:
        """Freeze what stays frozen, add what trains; the task head (`arch.profile.head_modules`)
        always trains."""
        raise NotImplementedError

    def settings(self, model: nn.Module, arch: Architecture) -> dict[str, Any]:
        """The settings that took effect on this model (target sets expanded to module names, an
        adapter width from its reduction factor), for the run record."""
        return {}

    def task_loss_only(self, model: nn.Module):
        """A context in which the model's loss is the task's alone, for scoring: validation losses
        stay comparable across methods (AdaLoRA adds its regulariser to every loss otherwise)."""
        return contextlib.nullcontext()

    def build_optimizer(self, model: nn.Module, lr: float, weight_decay: float, no_decay: tuple[str, ...], fused: bool = False):
        """AdamW over the trainable parameters; those whose names end in `no_decay` (biases,
        norms) without weight decay; torch's fused kernel when `fused` and the device has it (see
        `fused_adamw`). A method with its own optimizer (LoRA+) overrides this."""
        import torch

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, fused=fused and fused_adamw([p for _, p in named]))

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step, before gradients are zeroed (AdaLoRA re-allocates ranks here)."""

    def resume_state(self, model: nn.Module) -> dict[str, Any]:
        """What the method keeps outside the trainable weights and changes while training (AdaLoRA's
        sensitivity averages and rank pattern), for a resumable checkpoint."""
        return {}

    def load_resume_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Inverse of `resume_state`, on the model the run rebuilt."""

    def merged(self, model: nn.Module) -> nn.Module:
        """The trained model as a plain transformers model, for `peftlab.export --merge`: methods
        that train the model's own weights (full, BitFit, linear probe) already are one. Raises
        ConfigError, saying how to load the adapter instead, for a method that adds structure no
        transformers architecture has."""
        return model

    def save(self, model: nn.Module, folder: Path, state: dict[str, Any] | None = None) -> None:
        """Write only the trainable weights, never a copy of the frozen base. `state` is the model's
        full state dict gathered from a sharded run (peftlab.sharding); None: read the model itself."""
        from safetensors.torch import save_file

        from peftlab.sharding import trainable_names

        if state is None:
            state = {n: p for n, p in model.named_parameters() if p.requires_grad}
        trainable = trainable_names(model)
        tensors = {n: t.detach().contiguous() for n, t in state.items() if n in trainable}
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"method": self.cfg.name})

    def reload_note(self) -> Optional[str]:
        """Why a reload of the saved weights is not bit-identical to the trained model, for a method
        that saves a conversion of them; None: it is (evaluate then calls any difference a bug)."""
        return None

    def load(self, model: nn.Module, folder: Path, arch: Architecture) -> nn.Module:
        """Inverse of `save` on a base model: rebuild the method's structure, then load its weights."""
        from safetensors.torch import load_file

        model = self.apply(model, arch, total_steps=1)
        tensors = load_file(str(folder / WEIGHTS_FILE))
        unknown = set(tensors) - dict(model.named_parameters()).keys()
        if unknown:
            raise DataError(f"{folder / WEIGHTS_FILE} holds weights this model lacks: {sorted(unknown)[:3]}")
        model.load_state_dict(tensors, strict=False)
        return model


def freeze_all_but(model: nn.Module, prefixes: list[str]) -> None:
    """requires_grad only for parameters under one of the named modules."""
    for name, param in model.named_parameters():
        param.requires_grad = any(name == p or name.startswith(p + ".") for p in prefixes)


METHODS: Registry[type[Method]] = Registry("PEFT method")


def fused_adamw(params) -> bool:
    """Whether torch has a fused AdamW for these parameters (CPU and CUDA floats): one kernel over all
    of them instead of a dozen element-wise passes, and the HF Trainer's default since torch 2.8. Full
    fine-tuning spends a third of a CPU step in the optimizer without it."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
