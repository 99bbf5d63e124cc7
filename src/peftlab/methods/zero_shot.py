"""Zero-shot: no training at all; the model is scored as loaded. The floor of a generation table
(what an instruction-tuned LLM already does), and the first row of any method comparison."""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.methods.base import METHODS, Method, MethodConfig, freeze_all_but


@dataclass
class ZeroShotConfig(MethodConfig):
    pass


@METHODS.register("zero_shot")
class ZeroShot(Method):
    config_class = ZeroShotConfig
    trains = False

    def apply(self, model, arch, total_steps):
        freeze_all_but(model, [])
        return model
