"""Linear probe: only the task head trains. The floor every comparison table needs."""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.methods.base import METHODS, Method, MethodConfig, freeze_all_but


@dataclass
class LinearProbeConfig(MethodConfig):
    lr: float = 5e-3


@METHODS.register("linear_probe")
class LinearProbe(Method):
    config_class = LinearProbeConfig

    def apply(self, model, arch, total_steps):
        freeze_all_but(model, arch.profile.head_modules(model))
        return model
