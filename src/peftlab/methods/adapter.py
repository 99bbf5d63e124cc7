"""Bottleneck adapters: Houlsby (after attention and after the feed-forward block) or Pfeiffer
(after the feed-forward block only). peft has none, so they are written in `peftlab.nn.bottleneck`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import II

from peftlab.errors import ConfigError, require, require_choice
from peftlab.methods.base import METHODS, Method, MethodConfig, freeze_all_but
from peftlab.methods.targets import layer_suffixes, model_label

VARIANTS = ("houlsby", "pfeiffer")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")


@dataclass
class AdapterConfig(MethodConfig):
    variant: str = "houlsby"  # houlsby | pfeiffer
    bottleneck_dim: int = II("rank")  # width of the bottleneck
    reduction_factor: Optional[int] = None  # when set, bottleneck_dim = hidden size // reduction_factor
    activation: str = "relu"  # relu | gelu | silu | tanh
    attention_output: str = II("model.targets.attention_output")  # projection that ends attention
    ffn_output: str = II("model.targets.ffn_output")  # projection that ends the feed-forward block
    lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice("peft.variant", self.variant, VARIANTS)
        require(self.bottleneck_dim >= 1, "peft.bottleneck_dim", self.bottleneck_dim, "it must be >= 1")
        if self.reduction_factor is not None:
            require(self.reduction_factor >= 1, "peft.reduction_factor", self.reduction_factor, "it must be >= 1")
        require_choice("peft.activation", self.activation, ACTIVATIONS)


@METHODS.register("adapter")
class Adapter(Method):
    config_class = AdapterConfig

    def bottleneck_dim(self, hidden_size: int) -> int:
        if self.cfg.reduction_factor is not None:
            return max(1, hidden_size // self.cfg.reduction_factor)
        return self.cfg.bottleneck_dim

    def check(self, model):
        width = model.config.hidden_size
        dim = self.bottleneck_dim(width)
        if dim > width:
            raise ConfigError(
                f"peft.bottleneck_dim={dim} is out of range for {model_label(model)}; allowed: 1 to {width}, "
                "its hidden size (a bottleneck is narrower than the layer it adapts)"
            )

    def apply(self, model, head, total_steps):
        from peftlab.nn.bottleneck import insert_bottleneck_adapters

        try:
            adapted = insert_bottleneck_adapters(
                model,
                attention_output=self.cfg.attention_output if self.cfg.variant == "houlsby" else None,
                ffn_output=self.cfg.ffn_output,
                bottleneck_dim=self.bottleneck_dim(model.config.hidden_size),
                activation=self.cfg.activation,
            )
        except LookupError as err:
            raise ConfigError(
                f"peft.attention_output / peft.ffn_output: {err} in {model_label(model)}; allowed: names its "
                f"layers end in: {', '.join(layer_suffixes(model))}"
            ) from None
        freeze_all_but(model, [f"{name}.adapter" for name in adapted] + head)
        return model
