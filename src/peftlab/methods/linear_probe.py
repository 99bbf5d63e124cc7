"""Linear probe: only the task head trains. The floor every comparison table needs."""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.errors import ConfigError
from peftlab.methods.base import METHODS, Method, MethodConfig, freeze_all_but


@dataclass
class LinearProbeConfig(MethodConfig):
    lr: float = 5e-3


@METHODS.register("linear_probe")
class LinearProbe(Method):
    config_class = LinearProbeConfig

    def check(self, model, arch):
        # A language model's output layer is its pretrained LM head (tied to the input embeddings
        # in LLaMA, GPT-2, T5): training it is not a probe but a re-training of the vocabulary.
        if not arch.profile.head_modules(model):
            raise ConfigError(
                f"peft=linear_probe trains a new task head, and this {arch.model_type} {type(model).__name__} has none "
                "(its output layer is the pretrained LM head); allowed on generation tasks: lora and its variants, prefix_tuning, prompt_tuning, ia3, adapter, full, zero_shot"
            )

    def apply(self, model, arch, total_steps):
        freeze_all_but(model, arch.profile.head_modules(model))
        return model
