"""BitFit (Ben Zaken et al., 2022): only the bias terms train, with the task head. peft has no BitFit,
so it lives here; the trained biases are ordinary parameters, so the run saves just them and a
merged export is the model itself."""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.errors import ConfigError
from peftlab.methods.base import METHODS, Method, MethodConfig, freeze_all_but


@dataclass
class BitFitConfig(MethodConfig):
    lr: float = 1e-3  # biases alone move slowly: the paper trains them at 1e-4 to 1e-3


def bias_names(model, head: list[str]) -> list[str]:
    """Every bias outside the head, LayerNorm's included, as the paper's code trains them."""
    return [n for n, _ in model.named_parameters()
            if n.endswith("bias") and not any(n.startswith(h + ".") for h in head)]  # fmt: skip


@METHODS.register("bitfit")
class BitFit(Method):
    config_class = BitFitConfig

    def check(self, model, arch):
        if not bias_names(model, arch.profile.head_modules(model)):  # LLaMA, Qwen2 and T5 have no biases
            raise ConfigError(
                f"peft=bitfit trains the bias terms, and this {arch.model_type} model has none; "
                "allowed on it: lora, ia3, adapter or another weight method"
            )

    def apply(self, model, arch, total_steps):
        head = arch.profile.head_modules(model)
        freeze_all_but(model, head + bias_names(model, head))
        return model

    def settings(self, model, arch):
        return {"bias_tensors": len(bias_names(model, arch.profile.head_modules(model)))}
