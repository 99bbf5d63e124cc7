"""LoRA (Hu et al., 2021) through peft: W + (alpha / r) * B A on the target projections, and the
variants peft builds from the same config, each one YAML in conf/peft/:

- DoRA (Liu et al., 2024, `use_dora`): a learned magnitude per output feature times the direction W + BA.
- rsLoRA (Kalajdzievski, 2023, `use_rslora`): scale by alpha / sqrt(r), which keeps large ranks learning.
- PiSSA (Meng et al., 2024, `init: pissa`): A and B start at the principal singular vectors of W, and
  the base keeps the residual. The saved adapter is converted back to a plain LoRA on the original
  base (rank 2r), so it reloads like any other.
- LoRA+ (Hayou et al., 2024, `loraplus_lr_ratio`): B learns at a higher rate than A; the method
  builds its optimizer with peft's `create_loraplus_optimizer`.
- QLoRA (Dettmers et al., 2023, `quantize: nf4`): the frozen base loads in 4 bits through
  bitsandbytes, computing in bf16, and LoRA trains on top. CUDA only.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import II

from peftlab.architectures import check_target_setting
from peftlab.errors import ConfigError, require
from peftlab.methods.base import METHODS, MethodConfig, fused_adamw
from peftlab.methods.peft_library import PeftLibraryMethod

# peft's init_lora_weights values that start A and B from the base weight, which they then change.
MUTATING_INITS = re.compile(r"pissa(_niter_[1-9][0-9]*)?|olora")
QUANT_TYPES = ("nf4", "fp4")  # bitsandbytes' 4-bit types
INITS = "default (B = 0), gaussian, pissa, pissa_niter_N (randomised SVD, N subspace iterations), olora"


@dataclass
class LoraConfig(MethodConfig):
    r: int = II("rank")  # rank of the update B A
    alpha: float = II("alpha")  # scaling numerator: the update is multiplied by alpha / r (alpha / sqrt(r) with rsLoRA)
    dropout: float = 0.1  # dropout on the LoRA branch input
    target_modules: Any = "all_linear"  # a target set of the architecture, or a list of module-name suffixes
    use_dora: bool = False  # DoRA: a trained magnitude vector per adapted layer
    use_rslora: bool = False  # rsLoRA: alpha / sqrt(r) scaling
    init: str = "default"  # how A and B start; see INITS
    loraplus_lr_ratio: Optional[float] = None  # LoRA+: B's learning rate over A's; null is plain AdamW
    quantize: Optional[str] = None  # QLoRA: nf4 or fp4, the 4-bit type the frozen base loads in; null: unquantised
    double_quant: bool = True  # QLoRA's double quantisation: the quantisation constants quantised too
    lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.r >= 1, "peft.r", self.r, "it must be an integer >= 1")
        require(0 <= self.dropout < 1, "peft.dropout", self.dropout, "it must be in [0, 1)")
        check_target_setting("peft.target_modules", self.target_modules)
        if not (self.init in ("default", "gaussian") or MUTATING_INITS.fullmatch(self.init)):
            raise ConfigError(f"peft.init={self.init!r} is not an option; allowed: {INITS}")
        if self.quantize is not None and self.quantize not in QUANT_TYPES:
            raise ConfigError(f"peft.quantize={self.quantize!r} is not an option; allowed: {', '.join(QUANT_TYPES)}, or null")
        if self.loraplus_lr_ratio is not None:
            require(1 <= self.loraplus_lr_ratio < float("inf"), "peft.loraplus_lr_ratio", self.loraplus_lr_ratio,
                    "it must be >= 1 (B learns at lr times it), or null for plain AdamW")  # fmt: skip

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
            use_dora=self.cfg.use_dora,
            use_rslora=self.cfg.use_rslora,
            init_lora_weights=True if self.cfg.init == "default" else self.cfg.init,
            modules_to_save=head or None,
        )

    def check_run(self, cfg):
        if self.cfg.quantize is None:
            return
        import importlib.util

        what = f"peft.quantize={self.cfg.quantize} (QLoRA) loads the base in 4 bits through bitsandbytes"
        if cfg.trainer.accelerator not in ("gpu", "cuda"):
            raise ConfigError(f"{what}, which needs a CUDA GPU; trainer.accelerator={cfg.trainer.accelerator}; "
                              "allowed: trainer=gpu on a CUDA machine, or peft=lora (unquantised) here")  # fmt: skip
        if cfg.model.random_init is not None:
            raise ConfigError(f"{what} as pretrained weights load; model={cfg.model.name} is built at random, not loaded; "
                              "allowed: a pretrained model (model=smollm2, model=hub ...)")  # fmt: skip
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(f"{what}, which is not installed; run pip install bitsandbytes (CUDA machines)")

    def load_options(self):
        if self.cfg.quantize is None:
            return {}
        import torch
        from transformers import BitsAndBytesConfig

        return {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=self.cfg.quantize, bnb_4bit_use_double_quant=self.cfg.double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )}  # fmt: skip

    def apply(self, model, arch, total_steps):
        if self.cfg.quantize is not None:
            from peft import prepare_model_for_kbit_training

            # Norms and head in fp32, input embeddings' outputs requiring grad: peft's QLoRA recipe.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = super().apply(model, arch, total_steps)
        if MUTATING_INITS.fullmatch(self.cfg.init):
            # The base now holds W minus the initial B A: keep that initial adapter, so `save`
            # can write the trained one as a LoRA of the original W (peft's weight conversion).
            self._initial = tempfile.TemporaryDirectory(prefix="peftlab-lora-init-")
            model.save_pretrained(f"{self._initial.name}/initial")
        return model

    def save(self, model, folder, state=None):
        initial = getattr(self, "_initial", None)
        if initial is None:
            return super().save(model, folder, state)
        model.save_pretrained(str(folder), state_dict=state, path_initial_model_for_weight_conversion=f"{initial.name}/initial")
        # peft 0.21's conversion (LoraModel.subtract_mutated_init) keeps only lora_A / lora_B and
        # drops the trained head (modules_to_save): write it back beside the converted factors.
        from peft import get_peft_model_state_dict
        from safetensors.torch import load_file, save_file

        path = folder / "adapter_model.safetensors"
        converted = load_file(str(path))
        rest = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model, state_dict=state).items() if "lora_" not in k}
        save_file({**rest, **converted}, str(path), metadata={"format": "pt"})

    def reload_note(self):
        if not MUTATING_INITS.fullmatch(self.cfg.init):
            return None
        return (f"init={self.cfg.init} is saved as a LoRA of the original base (rank 2r, peft's conversion), "
                "which rounds differently from training's residual base")

    def build_optimizer(self, model, lr, weight_decay, no_decay, fused=False):
        if self.cfg.loraplus_lr_ratio is None:
            return super().build_optimizer(model, lr, weight_decay, no_decay, fused)
        import torch
        from peft.optimizers import create_loraplus_optimizer

        fused = fused and fused_adamw([p for p in model.parameters() if p.requires_grad])
        return create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=self.cfg.loraplus_lr_ratio,
                                         loraplus_weight_decay=weight_decay, fused=fused)  # fmt: skip

    def ranks(self):
        return {"peft.r": self.cfg.r}

    def settings(self, model, arch):
        c = self.cfg
        return {"r": c.r, "alpha": c.alpha, "dropout": c.dropout, "use_dora": c.use_dora, "use_rslora": c.use_rslora,
                "init": c.init, "loraplus_lr_ratio": c.loraplus_lr_ratio, "quantize": c.quantize,
                **({"double_quant": c.double_quant} if c.quantize else {}), **super().settings(model, arch)}  # fmt: skip
