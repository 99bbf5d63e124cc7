"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020) for Hugging Face encoders.

An adapter is attached to the output projection of a sub-layer through a forward hook and
registered as a child module named ``adapter`` of that projection. Pretrained parameter names
therefore stay unchanged (base checkpoints load as usual) and the adapter weights get names
like ``bert.encoder.layer.0.output.dense.adapter.down.weight``.

In HF BERT-style blocks the projection output then goes through dropout and
``LayerNorm(h + residual)``, which is exactly where both papers place the adapter.
"""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


class BottleneckAdapter(nn.Module):
    """x -> x + up(act(down(x))); up is zero-initialised so the wrapped model starts as the pretrained one."""

    def __init__(self, hidden_size: int, bottleneck_dim: int, activation: str = "gelu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; allowed: {', '.join(sorted(_ACTIVATIONS))}"
            )
        self.down = nn.Linear(hidden_size, bottleneck_dim)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck_dim, hidden_size)
        # Zero residual branch: inserting adapters leaves the model's function unchanged.
        # `up` gets gradients from the first step; `down` starts learning once `up` is non-zero.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def _apply_adapter(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return module.adapter(output)


def output_width(module: nn.Module) -> int | None:
    """Output features of a projection an adapter can follow: nn.Linear, or transformers' Conv1D
    (GPT-2's layers, whose weight is stored as (in, out))."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return int(module.nf)
    return None


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def _one_level_up(name: str, suffix: str) -> str | None:
    """Where `suffix` would sit one level up: "a.attention.output.dense" -> "a.output.dense"."""
    if name == suffix:
        return None
    parent = name[: -len(suffix) - 1].rpartition(".")[0]
    return f"{parent}.{suffix}" if parent else suffix


def insert_bottleneck_adapters(
    model: nn.Module,
    *,
    attention_output: str | None,
    ffn_output: str,
    bottleneck_dim: int,
    activation: str = "gelu",
) -> list[str]:
    """Attach an adapter to the output of every matching nn.Linear (or Conv1D); returns the names of the adapted modules (sorted, in model order).

    ``attention_output`` / ``ffn_output`` are module-name suffixes of the projections that end the
    attention and feed-forward sub-layers (BERT: ``"attention.output.dense"`` / ``"output.dense"``).
    ``attention_output=None`` gives the Pfeiffer layout (FFN adapter only), otherwise Houlsby.
    """
    if any(isinstance(m, BottleneckAdapter) for m in model.modules()):
        raise ValueError("model already has bottleneck adapters")

    linears = {name: m for name, m in model.named_modules() if output_width(m) is not None}
    attention = {n for n in linears if attention_output and _matches(n, attention_output)}
    ffn = {n for n in linears if _matches(n, ffn_output)}
    # The BERT FFN suffix "output.dense" also matches "layer.0.attention.output.dense", and with
    # attention_output=None (Pfeiffer) there is no attention suffix to exclude it by. So a match
    # is dropped when the block one level up owns a match of its own ("layer.0.output.dense").
    ffn = {n for n in ffn if _one_level_up(n, ffn_output) not in ffn}
    # Each named sub-layer must be found: a Houlsby layout whose attention name matches nothing
    # would silently train as Pfeiffer.
    for role, suffix, found in (("attention_output", attention_output, attention), ("ffn_output", ffn_output, ffn)):
        if suffix and not found:
            raise LookupError(f"no nn.Linear or Conv1D matched {role}={suffix!r}")
    # named_modules() order is model order, which is what callers expect back.
    targets = [(name, linear) for name, linear in linears.items() if name in attention | ffn]

    # Collect first, then mutate: adding children while iterating named_modules() is unsafe.
    for _, linear in targets:
        adapter = BottleneckAdapter(output_width(linear), bottleneck_dim, activation)
        linear.adapter = adapter.to(device=linear.weight.device, dtype=linear.weight.dtype)
        linear.register_forward_hook(_apply_adapter)
    return [name for name, _ in targets]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter parameters (names containing ".adapter."), detached and contiguous."""
    return {
        name: param.detach().contiguous()
        for name, param in model.named_parameters()
        if ".adapter." in name
    }
