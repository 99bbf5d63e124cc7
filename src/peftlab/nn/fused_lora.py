"""A leaner training forward for peft's LoRA Linear: the same function in fewer tensor operations.

peft computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling``. Under autocast that is about a
dozen full-size operations per layer: x is cast to bf16 twice (for the base layer and, after the
dropout, for lora_A), the frozen base weight is cast on every call (autocast would cache only
weights that train, and Lightning turns its cache off), the dropout builds a scaled float mask, and
the product is scaled and added in two more passes. Here, while training:

- x is cast once, and the base layer's frozen weight and bias are cast once per training phase
  (kept until the layer is next put in train or eval mode, merged, unmerged or its weight changes);
- layers that read the same fp32 tensor in a row (a block's query, key and value) share its cast,
  so their three gradients meet in bf16 at that one cast and go back through it in one pass (the
  cast is dropped when a layer is next put in train or eval mode);
- the dropout multiplies by a 0/1 keep mask, and its 1 / keep-rate moves, with ``scaling``, into the
  ``alpha`` of one ``addmm`` that adds the LoRA product to the base output.

Since A and B are linear, this is the same function; only the rounding differs (in fp32, to float
rounding; under bf16 autocast, within bf16's). The keep mask comes from the layer's own dropout
module: the fast CPU mask for a `FastDropout` (the same random draws as it, so fp32 runs reproduce
the plain forward's masks), torch's `bernoulli_` for an `nn.Dropout`. In eval mode, and for what this
does not cover (DoRA and other variants, several active adapters, merged weights, adapter_names,
a LoRA bias, a base layer that is not an `nn.Linear` or carries hooks), peft's forward runs as it is.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from peftlab.nn.dropout import FastDropout, keep_mask


class FusedLoraLinear(LoraLinear):
    """peft's LoRA Linear with the training forward above; everything else (merging, saving,
    unloading, eval) is peft's."""

    _frozen_cast: tuple | None = None  # (key, weight, bias): the base layer cast to the autocast dtype

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapter = self._fused_adapter(x, args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        if dtype is not None and x.dtype == torch.float32:
            x = _cast_once(x, dtype)  # for the base layer and the LoRA path alike
        weight, bias = self._base_weights(dtype)
        result = F.linear(x, weight, bias)

        scale = self.scaling[adapter]
        dropout = self.lora_dropout[adapter]
        if isinstance(dropout, nn.Dropout) and dropout.p > 0:
            keep, inverse_rate = keep_mask(x.shape, dropout.p, x.dtype, x.device, fast=isinstance(dropout, FastDropout))
            x = x * keep
            scale *= inverse_rate
        h = self.lora_A[adapter](x)
        out = torch.addmm(result.flatten(0, -2), h.flatten(0, -2), self.lora_B[adapter].weight.t(), alpha=scale)
        return out.view(result.shape)

    def _fused_adapter(self, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        """The one adapter the fused forward can run, or None to leave the call to peft."""
        if not self.training or self.disable_adapters or self.merged or args or kwargs or x.dim() < 2:
            return None
        active = self.active_adapters
        if len(active) != 1:
            return None
        adapter = active[0]
        if adapter not in self.lora_A or adapter in self.lora_variant or self.lora_B[adapter].bias is not None:
            return None
        dropout = self.lora_dropout[adapter]
        base = self.base_layer
        if not isinstance(dropout, (nn.Dropout, nn.Identity)) or base._forward_hooks or base._forward_pre_hooks:
            return None
        return adapter

    def _base_weights(self, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The base layer's weight and bias, the frozen ones cast to the autocast dtype once."""
        base = self.base_layer
        weight, bias = base.weight, base.bias
        if dtype is None or weight.requires_grad:
            return weight, bias  # fp32, or a weight that trains: autocast casts it, as for any layer
        bias_frozen = bias is not None and not bias.requires_grad
        key = (dtype, weight.device, weight.data_ptr(), weight._version, bias_frozen and (bias.data_ptr(), bias._version))
        if self._frozen_cast is None or self._frozen_cast[0] != key:
            self._frozen_cast = (key, weight.detach().to(dtype), bias.detach().to(dtype) if bias_frozen else None)
        return self._frozen_cast[1], self._frozen_cast[2] if bias_frozen else bias

    # Whatever may change the base weight without touching its version counter (peft merges
    # through `.data`) drops the cast copy.
    def train(self, mode: bool = True):
        self._frozen_cast = None
        _last_cast[0] = None  # nor does the last input's cast (and its graph) outlive a phase
        return super().train(mode)

    def merge(self, *args, **kwargs):
        self._frozen_cast = None
        return super().merge(*args, **kwargs)

    def unmerge(self, *args, **kwargs):
        self._frozen_cast = None
        return super().unmerge(*args, **kwargs)


# The last input cast: (weakref to the fp32 input, its version, dtype, grad mode, the cast copy).
_last_cast: list = [None]


def _cast_once(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in `dtype`, cast once for all the layers that read the same tensor in a row (a block's
    query, key and value read one hidden state): their gradients meet at the one cast and go back
    through it in one pass."""
    last = _last_cast[0]
    grad = torch.is_grad_enabled()
    if last is not None and last[0]() is x and last[1:4] == (x._version, dtype, grad):
        return last[4]
    cast = x.to(dtype)
    _last_cast[0] = (weakref.ref(x), x._version, dtype, grad, cast)
    return cast


def use_fused_lora(model: nn.Module) -> int:
    """Give every peft LoRA Linear over an `nn.Linear` the fused training forward; returns how many.
    Their parameters, names and state dict stay as they are."""
    fused = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.base_layer) is nn.Linear:
            module.__class__ = FusedLoraLinear
            fused += 1
    return fused
