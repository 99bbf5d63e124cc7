"""LoRA (Hu et al., 2021) through peft: W + (alpha / r) * B A on the target projections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import II

from peftlab.architectures import check_target_setting
from peftlab.errors import require
from peftlab.methods.base import METHODS, MethodConfig
from peftlab.methods.peft_library import PeftLibraryMethod


@dataclass
class LoraConfig(MethodConfig):
    r: int = II("rank")  # rank of the update B A
    alpha: float = II("alpha")  # scaling numerator: the update is multiplied by alpha / r
    dropout: float = 0.1  # dropout on the LoRA branch input
    target_modules: Any = "all_linear"  # a target set of the architecture, or a list of module-name suffixes
    lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.r >= 1, "peft.r", self.r, "it must be an integer >= 1")
        require(0 <= self.dropout < 1, "peft.dropout", self.dropout, "it must be in [0, 1)")
        check_target_setting("peft.target_modules", self.target_modules)

    def label(self) -> str:
        return f"{self.name}-r{self.r}"


@METHODS.register("lora")
class Lora(PeftLibraryMethod):
    config_class = LoraConfig

    def peft_config(self, arch, head, total_steps):
        import peft

        return peft.LoraConfig(
            r=self.cfg.r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=self.targets(arch),
            modules_to_save=head or None,
        )

    def ranks(self):
        return {"peft.r": self.cfg.r}

    def settings(self, model, arch):
        return {"r": self.cfg.r, "alpha": self.cfg.alpha, "dropout": self.cfg.dropout, **super().settings(model, arch)}
