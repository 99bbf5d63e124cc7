"""The layers a method adapts, found the way peft finds them, and the model-dependent checks on them.

A config can only be range-checked against the model once the model is known: a rank above the
layers it adapts adds parameters but no rank, and a target name that matches nothing is silently
skipped by peft when another name matches. Both are refused here, before training, in one line
that names the model's own layers.
"""

from __future__ import annotations

from typing import Optional

from peftlab.errors import ConfigError


def layer_dims(module) -> Optional[tuple[int, int]]:
    """(in, out) of a layer that low-rank methods adapt: nn.Linear, nn.Embedding, GPT-2's Conv1D."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers' GPT-2 layer: weight is (in, out)
        return int(module.weight.shape[0]), int(module.nf)
    return None


def matches(name: str, target: str) -> bool:
    """peft's rule for a list of target names: the module's full name, or its dotted suffix."""
    return name == target or name.endswith("." + target)


def adapted_layers(model, targets: list[str], key: str) -> dict[str, tuple[int, int]]:
    """{name: (in, out)} of the layers `targets` select; every target must select at least one."""
    names = [name for name, _ in model.named_modules() if name]
    for target in targets:
        if not any(matches(name, target) for name in names):
            raise ConfigError(
                f"{key}: {target!r} matches no module of {model_label(model)}; "
                f"allowed: names its adaptable layers end in: {', '.join(layer_suffixes(model))}"
            )
    return {
        name: dims
        for name, module in model.named_modules()
        if any(matches(name, t) for t in targets) and (dims := layer_dims(module)) is not None
    }


def layer_suffixes(model, linear_only: bool = False) -> list[str]:
    """Short names of the model's adaptable layers (query, value, dense...), for error messages;
    `linear_only` for bottleneck adapters, which follow projections (nn.Linear, Conv1D), not embeddings."""
    from torch import nn

    return sorted({
        name.rpartition(".")[2] for name, module in model.named_modules()
        if name and layer_dims(module) and not (linear_only and isinstance(module, nn.Embedding))
    })  # fmt: skip


def check_rank(model, layers: dict[str, tuple[int, int]], key: str, rank: int) -> None:
    """A rank-r update of an (in x out) layer has rank <= min(in, out): more only adds parameters."""
    if not layers:
        return
    name, (n_in, n_out) = min(layers.items(), key=lambda item: min(item[1]))
    limit = min(n_in, n_out)
    if rank > limit:
        raise ConfigError(
            f"{key}={rank} is out of range for {model_label(model)}; allowed: 1 to {limit}, "
            f"the smallest dimension of the layers it adapts ({name} is {n_in} x {n_out})"
        )


def model_label(model) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return f"this {model_type} model" if model_type else "this model"
