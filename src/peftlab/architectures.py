"""What peftlab knows about each architecture, in one place, keyed by `config.model_type` (as peft's
own constants are): which layers each method adapts, where bottleneck adapters go, which top-level
modules are the task head, and which parameters get no weight decay.

A method's config names a *set* of targets (`target_modules: all_linear`) or lists module names
itself (`target_modules: [query, value]`); a set is looked up here once the model is loaded, so
`model=hub model.name_or_path=roberta-base` needs no `targets:` block. A model whose type is not
here can still be used by giving the sets in its YAML (`model.targets`, the same keys as below).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, replace
from typing import Any

from peftlab.errors import ConfigError

# Target sets a method config may name instead of listing modules.
TARGET_SETS = ("attention", "all_linear", "ffn", "ffn_in", "ia3")
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


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
    heads: tuple[str, ...] = ("classifier", "qa_outputs", "score")  # top-level modules that form a task head
    no_decay: tuple[str, ...] = NO_DECAY
    position_offset: int = 0  # positions the model reserves (RoBERTa counts from its padding index + 1)

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
}


@dataclass(frozen=True)
class Architecture:
    """The profile of one loaded model, with the user's `model.targets` overrides applied."""

    model_type: str
    profile: Profile
    overridden: dict[str, Any] = field(default_factory=dict)

    def expand(self, value: Any, key: str) -> list[str]:
        """A method's target setting as module names: a set name is looked up, a list kept."""
        if isinstance(value, str):
            if value not in TARGET_SETS:
                raise ConfigError(f"{key}={value} is not a target set; allowed: {', '.join(TARGET_SETS)}, or a list of module names")
            return self.profile.targets(value)
        return list(value)


def architecture_of(model, overrides: dict[str, Any]) -> Architecture:
    """The architecture of a loaded model; `overrides` is `model.targets` from its YAML."""
    model_type = getattr(model.config, "model_type", None) or "unknown"
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
        return Architecture(model_type, Profile(**values), dict(overrides))
    return Architecture(model_type, replace(base, **values), dict(overrides))


def check_target_setting(key: str, value: Any) -> None:
    """Config-time check of a method's targets: a set name, or a non-empty list of names."""
    if isinstance(value, str):
        if value not in TARGET_SETS:
            raise ConfigError(f"{key}={value} is not a target set; allowed: {', '.join(TARGET_SETS)}, or a list of module names")
    elif not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key}={value} is out of range; name a target set ({', '.join(TARGET_SETS)}) or at least one module")
