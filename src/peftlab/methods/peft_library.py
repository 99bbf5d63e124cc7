"""Methods built by the peft library. Saved in peft's own format, so `PeftModel.from_pretrained` loads them.

`method: peft` runs any config class peft has (IA3Config, LoHaConfig, ...) from YAML alone:
a new peft method is one file in conf/peft/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from peftlab.architectures import Architecture
from peftlab.errors import ConfigError, first_line
from peftlab.methods.base import METHODS, Method, MethodConfig
from peftlab.methods.targets import adapted_layers, check_rank


# Options of peft configs that name modules, and so may name a target set of the architecture.
MODULE_OPTIONS = ("target_modules", "feedforward_modules")

# peft's task type for each kind of transformers head, by the model class's suffix: it picks the
# PeftModelFor... wrapper, whose forward runs the tuner's own (AdaLoRA adds its orthogonal
# regulariser to the loss there; a plain PeftModel skips it), and it is saved in
# adapter_config.json, so AutoPeftModelFor... reloads the adapter. Not question answering: peft
# 0.21's PeftModelForQuestionAnswering.forward drops token_type_ids and position_ids, so BERT would
# read every token as segment A (tests/test_methods.py shows it); QA keeps the plain PeftModel,
# which passes every input on.
TASK_TYPES = {
    "ForSequenceClassification": "SEQ_CLS",
    "ForTokenClassification": "TOKEN_CLS",
    "ForCausalLM": "CAUSAL_LM",
    "LMHeadModel": "CAUSAL_LM",  # GPT-2's GPT2LMHeadModel
    "ForConditionalGeneration": "SEQ_2_SEQ_LM",
}

# Configs whose r is not the rank of an update of W: VeRA's is the width of frozen random
# projections shared by all layers, which its paper takes above the hidden size (1024 on RoBERTa-base).
UNBOUNDED_RANK = {"VeraConfig"}

# Prompt learning (prefix / prompt tuning, P-tuning) prepends virtual tokens inside peft's
# PeftModelFor... wrappers. With token classification the logits gain those positions and the
# labels do not (peft 0.21 fails on the shapes); QA has no wrapper here (above). So: these heads.
PROMPT_LEARNING_TASK_TYPES = {"SEQ_CLS": "sequence classification", "CAUSAL_LM": "generation on a decoder",
                              "SEQ_2_SEQ_LM": "generation on an encoder-decoder"}  # fmt: skip


def route_generation_cache(model) -> None:
    """Let peft's prompt learning see transformers 5's generation cache, under the name it reads.

    transformers 5 passes the cache to `prepare_inputs_for_generation` and back as `cache`; peft
    0.21 looks for `past_key_values` there to tell the first step from the next ones. Without this,
    prefix tuning's trained keys and values are dropped inside generate (transformers keeps its own
    empty cache), and prompt tuning's virtual tokens are inserted again at every step. Renaming the
    base model's output restores peft's logic; the model's forward maps `past_key_values` back."""
    base_prepare = model.base_model_prepare_inputs_for_generation

    def prepare(*args, **kwargs):
        inputs = base_prepare(*args, **kwargs)
        if "cache" in inputs and "past_key_values" not in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    model.base_model_prepare_inputs_for_generation = prepare


def task_type(model) -> Optional[str]:
    """peft's task type for this model's head, or None (a bare PeftModel) for a head it has none for."""
    name = type(model).__name__
    return next((kind for suffix, kind in TASK_TYPES.items() if name.endswith(suffix)), None)


def unwrap_saved_modules(model) -> None:
    """Put each trained head copy (peft's modules_to_save) in its wrapper's place, as LoRA's own
    unload does. The unload of IA3, LoHa, LoKr and VeRA (peft 0.21) instead copies the wrapper's
    `.weight` onto that copy, and a head with no weight of its own (DeBERTa's ContextPooler) raised."""
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.modules_to_save[module.active_adapters[0]])


class PeftLibraryMethod(Method):
    """Base for methods whose structure peft builds; subclasses return the peft config."""

    target_key = "peft.target_modules"  # where the targets are set, for error messages

    def peft_config(self, arch: Architecture, head: list[str], total_steps: int):
        raise NotImplementedError

    def targets(self, arch: Architecture) -> Optional[list[str]]:
        """The module names it adapts on this architecture (a target set expanded)."""
        return arch.expand(self.cfg.target_modules, self.target_key)

    def ranks(self) -> dict[str, int]:
        """{config key: rank} of the low-rank factors this method builds, for the size check."""
        return {}

    def check(self, model, arch) -> None:
        targets = self.targets(arch)
        if targets is None:
            return
        layers = adapted_layers(model, targets, self.target_key)
        for rank_key, rank in self.ranks().items():
            check_rank(model, layers, rank_key, rank)

    def settings(self, model, arch):
        return {"target_modules": self.targets(arch)}

    def apply(self, model, arch, total_steps):
        from peft import get_peft_model

        # modules_to_save keeps the task head trainable and stores it with the adapter.
        try:
            config = self.peft_config(arch, arch.profile.head_modules(model), total_steps)
            config.task_type = task_type(model)
            if arch.profile.fan_in_fan_out and hasattr(config, "fan_in_fan_out"):
                config.fan_in_fan_out = True  # GPT-2's Conv1D stores (in, out); peft would warn and guess
            return get_peft_model(model, config)
        except (ValueError, TypeError) as err:  # peft's own checks of the config against the model, or option types
            raise ConfigError(f"peft cannot apply {self.cfg.name} to this model: {first_line(err)}") from None

    def prompt_learning(self) -> bool:
        """Prefix tuning, prompt tuning, P-tuning: virtual tokens instead of changed weights."""
        return False

    def merged(self, model):
        if self.prompt_learning():
            raise ConfigError(
                f"--merge: peft={self.cfg.name} prepends virtual tokens, which no weight of the model can hold; "
                "export without --merge and load the adapter with peft: PeftModel.from_pretrained(base, EXPORT/adapter)"
            )
        # LoRA and its variants, AdaLoRA, VeRA, LoHa, LoKr fold W + delta into W; IA3 scales W's rows or columns.
        unwrap_saved_modules(model)
        return model.merge_and_unload()

    def save(self, model, folder: Path, state=None) -> None:
        model.save_pretrained(str(folder), state_dict=state)  # peft keeps the adapter's keys of a gathered state

    def load(self, model, folder: Path, arch):
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(folder))


@dataclass
class PeftConfig(MethodConfig):
    peft_config: str = MISSING  # name of a config class in peft, e.g. IA3Config
    options: dict[str, Any] = field(default_factory=dict)  # its keyword arguments

    def label(self) -> str:
        rank = self.options.get("r")
        return f"{self.name}-r{rank}" if isinstance(rank, int) and not isinstance(rank, bool) else self.name


@METHODS.register("peft")
class PeftByName(PeftLibraryMethod):
    config_class = PeftConfig

    target_key = "peft.options.target_modules"

    def peft_config(self, arch, head, total_steps):
        import peft

        config_class = self.peft_config_class()
        if not (isinstance(config_class, type) and issubclass(config_class, peft.PeftConfig)):
            raise ConfigError(
                f"peft.peft_config={self.cfg.peft_config!r} is not a config class of peft; "
                "allowed: a peft *Config class such as IA3Config, LoHaConfig, LoKrConfig, VeraConfig"
            )
        try:
            return config_class(**self.options(arch), modules_to_save=head or None)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"peft.options for {self.cfg.peft_config}: {first_line(err)}") from None

    def peft_config_class(self):
        import peft

        return getattr(peft, self.cfg.peft_config, None)

    def apply(self, model, arch, total_steps):
        return self.generation_ready(super().apply(model, arch, total_steps))

    def load(self, model, folder: Path, arch):
        return self.generation_ready(super().load(model, folder, arch))

    def generation_ready(self, model):
        if self.prompt_learning() and hasattr(model, "base_model_prepare_inputs_for_generation"):
            route_generation_cache(model)  # a decoder's or an encoder-decoder's generate
        return model

    def prompt_learning(self) -> bool:
        import peft

        config_class = self.peft_config_class()
        return isinstance(config_class, type) and issubclass(config_class, peft.PromptLearningConfig)

    def virtual_tokens(self):
        if not self.prompt_learning() or self.cfg.peft_config == "PrefixTuningConfig":
            return 0  # prefix tuning's virtual tokens are keys and values, not input positions
        return int(self.cfg.options.get("num_virtual_tokens") or 0)

    def check_run(self, cfg):
        if self.cfg.peft_config == "PrefixTuningConfig" and cfg.trainer.gradient_checkpointing:
            raise ConfigError(
                f"peft={self.cfg.name} cannot train with trainer.gradient_checkpointing=true: peft refuses it, since its "
                "trained keys and values enter each layer as a cache; allowed: trainer.gradient_checkpointing=false, "
                "or peft=prompt_tuning / lora with checkpointing"
            )

    def check_task(self, task):
        tokens = self.cfg.options.get("num_virtual_tokens")
        if self.prompt_learning() and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            raise ConfigError(f"peft.options.num_virtual_tokens={tokens} is out of range; it must be an integer >= 1")
        if self.prompt_learning() and getattr(task.cfg, "packing", False):
            raise ConfigError(
                f"peft={self.cfg.name} cannot train on packed rows: peft drops the position ids that keep packed "
                "examples apart; allowed: task.packing=false"
            )

    def check(self, model, arch):
        if self.prompt_learning():
            self.check_prompt_learning(model, arch)
        super().check(model, arch)

    def check_prompt_learning(self, model, arch) -> None:
        import inspect

        head = f"this {model.config.model_type} {type(model).__name__}"
        kind = task_type(model)
        if kind not in PROMPT_LEARNING_TASK_TYPES:
            raise ConfigError(
                f"peft={self.cfg.name} ({self.cfg.peft_config}) is not supported by peft on {head}; allowed tasks: "
                f"{', '.join(PROMPT_LEARNING_TASK_TYPES.values())}; on this task: lora, ia3, adapter or another weight method"
            )
        # peft's own rule (PeftModel._prefix_tuning_forward): a classification head's forward must
        # take past_key_values, which transformers 5 renamed `cache`. The causal-LM and seq2seq
        # paths pass them anyway, and transformers' deprecation shim maps them in the forward;
        # inside generate, route_generation_cache gives peft the cache under the name it reads.
        takes_cache = "past_key_values" in inspect.signature(model.forward).parameters
        if self.cfg.peft_config == "PrefixTuningConfig" and kind == "SEQ_CLS" and not takes_cache:
            raise ConfigError(
                f"peft={self.cfg.name} passes its trained keys and values as past_key_values, which {head} does not take; "
                "allowed: generation tasks on decoders and encoder-decoders (model=smollm2 task=alpaca), or peft=prompt_tuning"
            )
        if self.virtual_tokens() and kind == "SEQ_CLS" and arch.profile.classifies_at_eos:
            raise ConfigError(
                f"peft={self.cfg.name} passes the input as embeddings, and {head} finds the eos token it scores in the "
                "token ids; allowed: a weight method on this task (lora, ia3, adapter), or a generation task (task=multi30k)"
            )

    def options(self, arch: Architecture) -> dict[str, Any]:
        """The peft config's keyword arguments, with target sets (`target_modules: attention`)
        expanded to this architecture's module names."""
        options = dict(self.cfg.options)
        for key in MODULE_OPTIONS:
            if isinstance(options.get(key), str):
                options[key] = arch.expand(options[key], f"peft.options.{key}")
        return options

    def targets(self, arch):
        targets = self.options(arch).get("target_modules")
        return list(targets) if isinstance(targets, (list, tuple)) else None  # None: peft's own choice

    def settings(self, model, arch):
        return {"peft_config": self.cfg.peft_config, **self.options(arch)}

    def ranks(self):
        if self.cfg.peft_config in UNBOUNDED_RANK:
            return {}
        rank = self.cfg.options.get("r")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ConfigError(f"peft.options.r={rank} is out of range; it must be an integer >= 1")
        return {} if rank is None else {"peft.options.r": rank}
