"""Bottleneck adapters: Houlsby (after attention and after the feed-forward block) or Pfeiffer
(after the feed-forward block only). peft has none, so they are written in `peftlab.nn.bottleneck`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import II

from peftlab.architectures import Architecture
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
    attention_output: Optional[str] = None  # projection that ends attention; null = the architecture's
    ffn_output: Optional[str] = None  # projection that ends the feed-forward block; null = the architecture's
    lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice("peft.variant", self.variant, VARIANTS)
        require(self.bottleneck_dim >= 1, "peft.bottleneck_dim", self.bottleneck_dim, "it must be >= 1")
        if self.reduction_factor is not None:
            require(self.reduction_factor >= 1, "peft.reduction_factor", self.reduction_factor, "it must be >= 1")
        require_choice("peft.activation", self.activation, ACTIVATIONS)

    def label(self) -> str:  # b: bottleneck width; rf: hidden size divided by it
        return f"{self.name}-rf{self.reduction_factor}" if self.reduction_factor is not None else f"{self.name}-b{self.bottleneck_dim}"


@METHODS.register("adapter")
class Adapter(Method):
    config_class = AdapterConfig

    def merged(self, model):
        raise ConfigError(
            f"--merge: peft={self.cfg.name} inserts bottleneck layers that no transformers architecture has, so it "
            "cannot be merged; export without --merge (EXPORT/adapter holds its weights) and load it with "
            "peftlab.reload.load_run(RUN), or python -m peftlab.evaluate RUN"
        )

    def bottleneck_dim(self, hidden_size: int) -> int:
        if self.cfg.reduction_factor is not None:
            return max(1, hidden_size // self.cfg.reduction_factor)
        return self.cfg.bottleneck_dim

    def insertion_points(self, arch: Architecture) -> tuple[Optional[str], str]:
        """(attention_output, ffn_output) suffixes: Pfeiffer has no attention adapter."""
        attention = self.cfg.attention_output or arch.profile.attention_output
        return (attention if self.cfg.variant == "houlsby" else None), self.cfg.ffn_output or arch.profile.ffn_output

    def settings(self, model, arch):
        attention_output, ffn_output = self.insertion_points(arch)
        return {"variant": self.cfg.variant, "bottleneck_dim": self.bottleneck_dim(_width(model)),
                "activation": self.cfg.activation, "attention_output": attention_output, "ffn_output": ffn_output}  # fmt: skip

    def check(self, model, arch):
        width = _width(model)
        dim = self.bottleneck_dim(width)
        if dim > width:
            raise ConfigError(
                f"peft.bottleneck_dim={dim} is out of range for {model_label(model)}; allowed: 1 to {width}, "
                "its hidden size (a bottleneck is narrower than the layer it adapts)"
            )

    def apply(self, model, arch, total_steps):
        from peftlab.nn.bottleneck import insert_bottleneck_adapters

        attention_output, ffn_output = self.insertion_points(arch)
        try:
            adapted = insert_bottleneck_adapters(
                model,
                attention_output=attention_output,
                ffn_output=ffn_output,
                bottleneck_dim=self.bottleneck_dim(_width(model)),
                activation=self.cfg.activation,
            )
        except LookupError as err:
            raise ConfigError(
                f"peft.attention_output / peft.ffn_output: {err} in {model_label(model)}; allowed: names its "
                f"projections end in: {', '.join(layer_suffixes(model, linear_only=True))}"
            ) from None
        freeze_all_but(model, [f"{name}.adapter" for name in adapted] + arch.profile.head_modules(model))
        return model


def _width(model) -> int:
    config = model.config
    return getattr(config, "hidden_size", None) or config.dim  # DistilBERT calls it dim
