"""LoRA (Hu et al., 2021) through peft: W + (alpha / r) * B A on the target projections."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import II

from peftlab.errors import require
from peftlab.methods.base import METHODS, MethodConfig
from peftlab.methods.peft_library import PeftLibraryMethod


@dataclass
class LoraConfig(MethodConfig):
    r: int = II("rank")  # rank of the update B A
    alpha: float = II("alpha")  # scaling numerator: the update is multiplied by alpha / r
    dropout: float = 0.1  # dropout on the LoRA branch input
    target_modules: list[str] = II("model.targets.all_linear")  # module-name suffixes to adapt
    lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.dropout < 1, "peft.dropout", self.dropout, "it must be in [0, 1)")
        require(len(self.target_modules) > 0, "peft.target_modules", self.target_modules, "name at least one module")


@METHODS.register("lora")
class Lora(PeftLibraryMethod):
    config_class = LoraConfig

    def peft_config(self, head, total_steps):
        import peft

        return peft.LoraConfig(
            r=self.cfg.r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=list(self.cfg.target_modules),
            modules_to_save=head or None,
        )

    def ranks(self):
        return {"peft.r": self.cfg.r}
