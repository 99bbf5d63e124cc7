"""Methods built by the peft library. Saved in peft's own format, so `PeftModel.from_pretrained` loads them.

`method: peft` runs any config class peft has (IA3Config, LoHaConfig, ...) from YAML alone:
a new peft method is one file in conf/peft/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from peftlab.errors import ConfigError, first_line
from peftlab.methods.base import METHODS, Method, MethodConfig
from peftlab.methods.targets import adapted_layers, check_rank


class PeftLibraryMethod(Method):
    """Base for methods whose structure peft builds; subclasses return the peft config."""

    def peft_config(self, head: list[str], total_steps: int):
        raise NotImplementedError

    def target_modules(self) -> tuple[str, Optional[list[str]]]:
        """(config key, the module names it targets); None when peft picks them (a regex, say)."""
        targets = getattr(self.cfg, "target_modules", None)
        return "peft.target_modules", list(targets) if isinstance(targets, (list, tuple)) else None

    def ranks(self) -> dict[str, int]:
        """{config key: rank} of the low-rank factors this method builds, for the size check."""
        return {}

    def check(self, model) -> None:
        key, targets = self.target_modules()
        if targets is None:
            return
        layers = adapted_layers(model, list(targets), key)
        for rank_key, rank in self.ranks().items():
            check_rank(model, layers, rank_key, rank)

    def apply(self, model, head, total_steps):
        from peft import get_peft_model

        # modules_to_save keeps the task head trainable and stores it with the adapter.
        try:
            return get_peft_model(model, self.peft_config(head, total_steps))
        except ValueError as err:  # peft's own checks of the config against the model
            raise ConfigError(f"peft cannot apply {self.cfg.name} to this model: {first_line(err)}") from None

    def save(self, model, folder: Path) -> None:
        model.save_pretrained(str(folder))

    def load(self, model, folder: Path):
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(folder))


@dataclass
class PeftConfig(MethodConfig):
    peft_config: str = MISSING  # name of a config class in peft, e.g. IA3Config
    options: dict[str, Any] = field(default_factory=dict)  # its keyword arguments


@METHODS.register("peft")
class PeftByName(PeftLibraryMethod):
    config_class = PeftConfig

    def peft_config(self, head, total_steps):
        import peft

        config_class = getattr(peft, self.cfg.peft_config, None)
        if not (isinstance(config_class, type) and issubclass(config_class, peft.PeftConfig)):
            raise ConfigError(
                f"peft.peft_config={self.cfg.peft_config!r} is not a config class of peft; "
                "allowed: a peft *Config class such as IA3Config, LoHaConfig, LoKrConfig, VeraConfig"
            )
        try:
            return config_class(**self.cfg.options, modules_to_save=head or None)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"peft.options for {self.cfg.peft_config}: {first_line(err)}") from None

    def target_modules(self):
        targets = self.cfg.options.get("target_modules")
        return "peft.options.target_modules", list(targets) if isinstance(targets, (list, tuple)) else None

    def ranks(self):
        rank = self.cfg.options.get("r")
        return {"peft.options.r": rank} if isinstance(rank, int) else {}
