"""transformers' SDPA attention, with the fast dropout mask while training on CPU.

With dropout, torch's `scaled_dot_product_attention` leaves its fused CPU kernel for the math path,
which draws the attention-probability mask with `bernoulli_`, the serial loop `peftlab.nn.dropout`
avoids. This attention function, registered with transformers' `AttentionInterface` as
``sdpa_fast_dropout``, is transformers' ``sdpa`` one, except while training on CPU with dropout: it
then runs the math path's arithmetic itself (bf16 and fp16 inputs upcast to fp32, the softmax of
fully masked rows 0, the output cast back) with the keep mask of `peftlab.nn.dropout`. Models with
an attention bias, a softcap or attention outputs asked for keep transformers' function.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from peftlab.nn.dropout import keep_mask

NAME = "sdpa_fast_dropout"


def math_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                   dropout: float, is_causal: bool, scale: float | None) -> torch.Tensor:  # fmt: skip
    """torch's math SDPA over (batch, heads, length, dim) tensors, with the fast dropout mask.

    The same arithmetic in fewer passes: each input is cast and laid out for bmm in one copy; the
    scale and the mask (as an additive -inf bias, built once for all the layers that share the mask)
    go into one baddbmm; the keep mask holds 1 / the keep rate; the output is cast back in the layout
    the caller transposes it to."""
    dtype = query.dtype
    batch, heads, q_length, dim = query.shape
    with torch.autocast(query.device.type, enabled=False):  # the math path's own precision, not autocast's
        q, k, v = (_for_bmm(t) for t in (query, key, value))
        bias, empty_rows = _additive_mask(mask, is_causal, batch, heads, q_length, k.shape[1], q.dtype)
        alpha = scale if scale is not None else 1 / math.sqrt(dim)
        if bias is None:
            scores = torch.bmm(q, k.transpose(1, 2)).mul_(alpha)
        else:
            scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=alpha)
        probs = torch.softmax(scores, dim=-1)
        if empty_rows:  # a fully masked row gives 0, as torch's math path does, not NaN
            probs = probs.nan_to_num(0.0)
        keep, _ = keep_mask(probs.shape, dropout, probs.dtype, probs.device, scaled=True)
        out = torch.bmm(probs * keep, v).view(batch, heads, q_length, -1)
        # (batch, length, heads, dim) in the input's dtype, in one pass; returned as the usual view.
        return out.transpose(1, 2).to(dtype, memory_format=torch.contiguous_format).transpose(1, 2)


def _for_bmm(t: torch.Tensor) -> torch.Tensor:
    """(batch, heads, length, dim) -> (batch * heads, length, dim), contiguous, in fp32 (the math path
    upcasts bf16 and fp16)."""
    dtype = torch.float32 if t.dtype in (torch.bfloat16, torch.float16) else t.dtype
    return t.to(dtype, memory_format=torch.contiguous_format).reshape(-1, *t.shape[-2:])


# The last mask's bias: every layer of a forward pass gets the same mask tensor.
_bias_cache: list = [None, None]  # [(mask, its version, is_causal, shapes, dtype), (bias, empty_rows)]


def _additive_mask(mask: torch.Tensor | None, is_causal: bool, batch: int, heads: int, q_length: int,
                   k_length: int, dtype: torch.dtype) -> tuple[torch.Tensor | None, bool]:  # fmt: skip
    """The mask as a bias in the scores' dtype, of shape (batch * heads, q_length, k_length): 0 where
    attended, -inf where not (None without a mask); and whether some query row attends to nothing."""
    if mask is None and not is_causal:
        return None, False
    key = (mask, mask._version if mask is not None else None, is_causal, batch, heads, q_length, k_length, dtype)
    cached = _bias_cache[0]
    if cached is not None and cached[0] is mask and cached[1:] == key[1:]:
        return _bias_cache[1]
    if is_causal:
        mask = torch.ones(q_length, k_length, dtype=torch.bool, device=mask.device if mask is not None else None).tril_()
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask.logical_not(), float("-inf"))
    else:
        bias = mask.to(dtype)
    bias = bias.expand(batch, heads, q_length, k_length).reshape(batch * heads, q_length, k_length)
    empty_rows = bool(torch.isneginf(bias).all(dim=-1).any())  # CPU only: no device to wait for
    _bias_cache[:] = [key, (bias, empty_rows)]
    return bias, empty_rows


def sdpa_fast_dropout_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                                is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:  # fmt: skip
    fast = module.training and dropout > 0 and query.device.type == "cpu"
    if not fast or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None or kwargs.get("output_attentions"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)  # fmt: skip
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    q_length = query.shape[2]
    # As transformers' sdpa function decides it: causal only without a mask (the mask then holds it).
    is_causal = q_length > 1 and attention_mask is None and (is_causal if is_causal is not None else getattr(module, "is_causal", True))
    if is_causal and key.shape[2] > q_length:
        key, value = key[:, :, :q_length], value[:, :, :q_length]
    out = math_attention(query, key, value, attention_mask, dropout, is_causal, scaling)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_fast_dropout_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the same masks as sdpa


def use_fast_dropout_attention(model: nn.Module) -> bool:
    """Switch a model that attends with transformers' sdpa to the function above; True if it did."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    config._attn_implementation = NAME
    return True
