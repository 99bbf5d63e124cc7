"""What peftlab knows about each architecture, in one place, keyed by `config.model_type` (as peft's
own constants are): which layers each method adapts, where bottleneck adapters go, which top-level
modules are the task head, and which parameters get no weight decay.

A method's config names a *set* of targets (`target_modules: all_linear`) or lists module names
itself (`target_modules: [query, value]`); a set is looked up here once the model is loaded, so
`model=hub model.name_or_path=roberta-base` needs no `targets:` block. A set may name layers only
some models of a type have (T5 v1.0's `wi` and v1.1's gated `wi_0`, `wi_1`): the names the loaded
model lacks are dropped from it. A model whose type is not here can still be used by giving the
sets in its YAML (`model.targets`, the same keys as below).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, replace
from typing import Any

from peftlab.errors import ConfigError

# Target sets a method config may name instead of listing modules.
TARGET_SETS = ("attention", "all_linear", "ffn", "ffn_in", "ia3")
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight")
# What a model is built of, which decides the tasks it can train: encoders classify and tag,
# decoders and encoder-decoders also generate.
FAMILIES = ("encoder", "decoder", "encoder-decoder")


@dataclass(frozen=True)
class Profile:
    """Module-name suffixes (peft's matching: the full name or a dotted suffix of it)."""

    attention: tuple[str, ...]  # the query and value projections (the LoRA paper's choice)
    all_linear: tuple[str, ...]  # every Linear of the encoder blocks (not the pooler, not the head)
    ffn: tuple[str, ...]  # the feed-forward block's two projections
    ffn_in: tuple[str, ...]  # its first projection, whose activations (IA)^3 rescales
    ia3: tuple[str, ...]  # (IA)^3's targets: keys, values and ffn_in
    attention_output: str  # the projection that ends the attention sub-layer (Houlsby adapters)
    ffn_output: str  # the projection that ends the feed-forward sub-layer (both adapter layouts)
    # top-level modules that form a new task head (not a pretrained LM head, which is the model's own)
    heads: tuple[str, ...] = ("classifier", "qa_outputs", "score", "classification_head")
    no_decay: tuple[str, ...] = NO_DECAY
    position_offset: int = 0  # positions the model reserves (RoBERTa counts from its padding index + 1)
    family: str = "encoder"  # encoder | decoder | encoder-decoder
    fan_in_fan_out: bool = False  # its layers store weights as (in, out): GPT-2's Conv1D (peft needs to know)
    # Its sequence-classification head reads the hidden state at each input's last eos token, which
    # it finds in input_ids (T5): the tokenizer must end inputs with eos and pad with another token,
    # and prompt tuning, which passes embeddings instead of ids, cannot reach it.
    classifies_at_eos: bool = False

    def targets(self, name: str) -> list[str]:
        return list(getattr(self, name))

    def head_modules(self, model) -> list[str]:
        """The head modules this model has (a token-classification DeBERTa has no pooler)."""
        return [name for name, _ in model.named_children() if name in self.heads]


_BERT = Profile(
    attention=("query", "value"),
    all_linear=("query", "key", "value", "output.dense", "intermediate.dense"),  # output.dense: both sub-layers
    ffn=("intermediate.dense", "output.dense"),
    ffn_in=("intermediate.dense",),
    ia3=("key", "value", "intermediate.dense"),
    attention_output="attention.output.dense",
    ffn_output="output.dense",
)

_LLAMA = Profile(
    attention=("q_proj", "v_proj"),
    all_linear=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ffn=("gate_proj", "up_proj", "down_proj"),
    ffn_in=("down_proj",),
    ia3=("k_proj", "v_proj", "down_proj"),
    attention_output="self_attn.o_proj",
    ffn_output="mlp.down_proj",
    family="decoder",
)

PROFILES: dict[str, Profile] = {
    "bert": _BERT,
    "roberta": replace(_BERT, position_offset=2),  # BERT's module names; its head `classifier` holds dense + out_proj
    "electra": _BERT,
    "deberta-v2": replace(
        _BERT,
        attention=("query_proj", "value_proj"),
        all_linear=("query_proj", "key_proj", "value_proj", "output.dense", "intermediate.dense"),
        ia3=("key_proj", "value_proj", "intermediate.dense"),
        heads=("pooler", "classifier", "qa_outputs", "score"),  # its ContextPooler is new with the head, not pretrained
    ),
    "distilbert": Profile(
        attention=("q_lin", "v_lin"),
        all_linear=("q_lin", "k_lin", "v_lin", "out_lin", "ffn.lin1", "ffn.lin2"),
        ffn=("ffn.lin1", "ffn.lin2"),
        ffn_in=("ffn.lin1",),
        ia3=("k_lin", "v_lin", "ffn.lin1"),
        attention_output="attention.out_lin",
        ffn_output="ffn.lin2",
        heads=("pre_classifier", "classifier", "qa_outputs", "score"),
    ),
    # Decoders: pre-norm blocks; the attention output and the FFN's last projection end each sub-layer.
    # (IA)^3 follows peft's own constants: keys, values and the FFN's down projection, rescaled at its
    # input (the FFN's activations).
    "llama": _LLAMA,
    "qwen2": _LLAMA,  # LLaMA's module names; its q, k, v projections have biases
    "gpt2": Profile(
        attention=("c_attn",),  # one fused query-key-value projection
        all_linear=("c_attn", "c_proj", "c_fc"),  # c_proj: both the attention's and the FFN's output
        ffn=("c_fc", "mlp.c_proj"),
        ffn_in=("mlp.c_proj",),
        ia3=("c_attn", "mlp.c_proj"),
        attention_output="attn.c_proj",
        ffn_output="mlp.c_proj",
        family="decoder",
        fan_in_fan_out=True,
    ),
    # T5 v1.0 (t5-small) has DenseReluDense.wi; v1.1 and FLAN-T5 a gated wi_0, wi_1 (see above).
    "t5": Profile(
        attention=("q", "v"),
        all_linear=("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"),
        ffn=("wi", "wi_0", "wi_1", "wo"),
        ffn_in=("wo",),
        ia3=("k", "v", "wo"),
        attention_output="SelfAttention.o",
        ffn_output="DenseReluDense.wo",
        family="encoder-decoder",
        classifies_at_eos=True,
    ),
}


@dataclass(frozen=True)
class Architecture:
    """The profile of one loaded model, with the user's `model.targets` overrides applied."""

    model_type: str
    profile: Profile
    overridden: dict[str, Any] = field(default_factory=dict)
    module_names: frozenset[str] = frozenset()  # the loaded model's, for target sets

    def expand(self, value: Any, key: str) -> list[str]:
        """A method's target setting as module names: a set name is looked up (keeping the names
        this model has), a list kept as given (and checked by the method: every name must match)."""
        if isinstance(value, str):
            if value not in TARGET_SETS:
                raise ConfigError(f"{key}={value} is not a target set; allowed: {', '.join(TARGET_SETS)}, or a list of module names")
            names = self.profile.targets(value)
            present = [t for t in names if any(n == t or n.endswith("." + t) for n in self.module_names)]
            return present or names  # none present: keep them all, so the method's check names the model's layers
        return list(value)


def architecture_of(model, overrides: dict[str, Any]) -> Architecture:
    """The architecture of a loaded model; `overrides` is `model.targets` from its YAML."""
    model_type = getattr(model.config, "model_type", None) or "unknown"
    names = frozenset(name for name, _ in model.named_modules() if name)
    base = PROFILES.get(model_type)
    if base is None and not overrides:
        raise ConfigError(
            f"no architecture profile for model_type {model_type!r}; allowed: {', '.join(sorted(PROFILES))}, "
            f"or give model.targets with {', '.join(TARGET_SETS)}, attention_output and ffn_output"
        )
    fields = Profile.__dataclass_fields__
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f"model.targets.{unknown[0]}: unknown key; allowed: {', '.join(fields)}")
    values = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in overrides.items()}
    if base is None:
        missing = [k for k, f in fields.items() if f.default is MISSING and k not in values]
        if missing:
            raise ConfigError(f"model.targets: {model_type!r} has no profile, so give every key; missing: {', '.join(missing)}")
        profile = Profile(**values)
    else:
        profile = replace(base, **values)
    if profile.family not in FAMILIES:
        raise ConfigError(f"model.targets.family={profile.family!r} is not a model family; allowed: {', '.join(FAMILIES)}")
    return Architecture(model_type, profile, dict(overrides), names)


def family_of(config, overrides: dict[str, Any]) -> str:
    """encoder, decoder or encoder-decoder, from a model's config alone (before its weights load):
    the profile's, the YAML's `model.targets.family`, or what the config says of itself."""
    if "family" in overrides:
        return str(overrides["family"])
    profile = PROFILES.get(getattr(config, "model_type", None))
    if profile is not None:
        return profile.family
    return "encoder-decoder" if getattr(config, "is_encoder_decoder", False) else "encoder"


def check_target_setting(key: str, value: Any) -> None:
    """Config-time check of a method's targets: a set name, or a non-empty list of names."""
    if isinstance(value, str):
        if value not in TARGET_SETS:
            raise ConfigError(f"{key}={value} is not a target set; allowed: {', '.join(TARGET_SETS)}, or a list of module names")
    elif not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key}={value} is out of range; name a target set ({', '.join(TARGET_SETS)}) or at least one module")
