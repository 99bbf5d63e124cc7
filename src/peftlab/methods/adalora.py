"""AdaLoRA (Zhang et al., 2023) through peft: LoRA in SVD form whose rank budget shrinks during training.

peft needs the exact number of optimizer steps (`total_step`) and a call to `update_and_allocate`
after every optimizer step, while the gradients are still there; the trainer makes that call through
`after_optimizer_step`. The orthogonality regulariser is added to the loss by peft's own forward.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import II

from peftlab.architectures import check_target_setting
from peftlab.errors import ConfigError, require
from peftlab.methods.base import METHODS, MethodConfig
from peftlab.methods.peft_library import PeftLibraryMethod


@dataclass
class AdaLoraConfig(MethodConfig):
    target_r: int = II("rank")  # average rank per adapted matrix once the budget has shrunk
    init_r: Optional[int] = None  # starting rank of every matrix; None = ceil(1.5 * target_r), as peft's 12 -> 8
    alpha: float = II("alpha")
    dropout: float = 0.1
    target_modules: Any = "all_linear"  # a target set of the architecture, or a list of module-name suffixes
    tinit: Optional[int] = None  # steps of warm-up at the full budget; None = 10% of training
    tfinal: Optional[int] = None  # final steps at the target budget; None = 30% of training
    deltaT: int = 10  # steps between two budget re-allocations
    beta1: float = 0.85  # EMA factor of the sensitivity
    beta2: float = 0.85  # EMA factor of its uncertainty
    orth_reg_weight: float = 0.5  # weight of the orthogonality regulariser in the loss
    lr: float = 5e-3  # its E starts at zero: at 1e-3 it learns far slower than LoRA

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_r is None:
            self.init_r = math.ceil(1.5 * self.target_r)
        require(self.target_r >= 1, "rank", self.target_r, "AdaLoRA's target rank must be >= 1")
        require(self.init_r >= self.target_r, "peft.init_r", self.init_r, f"it must be >= the target rank {self.target_r}")
        require(self.deltaT >= 1, "peft.deltaT", self.deltaT, "it must be >= 1")
        for key in ("beta1", "beta2"):
            require(0 <= getattr(self, key) < 1, f"peft.{key}", getattr(self, key), "it must be in [0, 1): an EMA factor")
        for key in ("tinit", "tfinal"):
            value = getattr(self, key)
            require(value is None or value >= 0, f"peft.{key}", value, "it must be >= 0 steps, or null for the default")
        require(self.orth_reg_weight >= 0, "peft.orth_reg_weight", self.orth_reg_weight, "it must be >= 0")
        require(0 <= self.dropout < 1, "peft.dropout", self.dropout, "it must be in [0, 1)")
        check_target_setting("peft.target_modules", self.target_modules)

    def label(self) -> str:
        return f"{self.name}-r{self.target_r}"  # the rank it ends at


@METHODS.register("adalora")
class AdaLora(PeftLibraryMethod):
    config_class = AdaLoraConfig

    def schedule(self, total_steps: int) -> tuple[int, int]:
        """(tinit, tfinal), leaving a budgeting phase in between as peft requires."""
        tinit = self.cfg.tinit if self.cfg.tinit is not None else total_steps // 10
        tfinal = self.cfg.tfinal if self.cfg.tfinal is not None else (3 * total_steps) // 10
        if tinit >= total_steps - tfinal:
            raise ConfigError(
                f"peft.tinit={tinit} + peft.tfinal={tfinal} leave no budgeting phase in {total_steps} "
                "training steps; lower them or train longer"
            )
        return tinit, tfinal

    def peft_config(self, arch, head, total_steps):
        import peft

        tinit, tfinal = self.schedule_steps = self.schedule(total_steps)  # kept for the run record
        return peft.AdaLoraConfig(
            init_r=self.cfg.init_r,
            target_r=self.cfg.target_r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=self.targets(arch),
            tinit=tinit,
            tfinal=tfinal,
            deltaT=self.cfg.deltaT,
            beta1=self.cfg.beta1,
            beta2=self.cfg.beta2,
            orth_reg_weight=self.cfg.orth_reg_weight,
            total_step=total_steps,
            modules_to_save=head or None,
        )

    def ranks(self):
        return {"peft.init_r": self.cfg.init_r}  # every matrix starts at init_r >= target_r

    def settings(self, model, arch):
        tinit, tfinal = getattr(self, "schedule_steps", (None, None))
        return {"init_r": self.cfg.init_r, "target_r": self.cfg.target_r, "alpha": self.cfg.alpha, "dropout": self.cfg.dropout,
                **super().settings(model, arch), "tinit": tinit, "tfinal": tfinal, "deltaT": self.cfg.deltaT,
                "beta1": self.cfg.beta1, "beta2": self.cfg.beta2, "orth_reg_weight": self.cfg.orth_reg_weight}  # fmt: skip

    def load(self, model, folder, arch):
        from peft import PeftModel

        # Loaded as trainable, then frozen: peft's AdaLoraModel knows its adapter's name only in
        # trainable mode, and its forward needs it whenever a loss is computed.
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
        return model.requires_grad_(False)

    def resume_state(self, model):
        # The budget schedule's memory: sensitivity averages per matrix, and the ranks it kept.
        allocator = model.base_model.rankallocator
        return {"ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt, "exp_avg_unc": allocator.exp_avg_unc,
                "rank_pattern": model.peft_config[model.active_adapter].rank_pattern}  # fmt: skip

    def load_resume_state(self, model, state):
        allocator = model.base_model.rankallocator
        allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = state["ipt"], state["exp_avg_ipt"], state["exp_avg_unc"]
        model.peft_config[model.active_adapter].rank_pattern = state["rank_pattern"]

    @contextlib.contextmanager
    def task_loss_only(self, model):
        # peft adds orth_reg_weight * (the regulariser) to every loss its forward returns; at 0 the
        # sum is the task's loss exactly.
        config = model.peft_config[model.active_adapter]
        weight, config.orth_reg_weight = config.orth_reg_weight, 0.0
        try:
            yield
        finally:
            config.orth_reg_weight = weight

    def after_optimizer_step(self, model, step):
        model.base_model.update_and_allocate(step)
