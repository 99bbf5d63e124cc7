"""Full fine-tuning: every weight trains. The ceiling every comparison is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.methods.base import METHODS, Method, MethodConfig


@dataclass
class FullConfig(MethodConfig):
    lr: float = 5e-5


@METHODS.register("full")
class Full(Method):
    config_class = FullConfig

    def apply(self, model, arch, total_steps):
        for param in model.parameters():
            param.requires_grad = True
        return model
