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
    """torch's math SDPA over (batch, heads, length, dim) tensors, with the fast dropout mask."""
    dtype = query.dtype
    with torch.autocast(query.device.type, enabled=False):  # the math path's own precision, not autocast's
        query, key, value = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t for t in (query, key, value))
        scores = torch.matmul(query, key.transpose(-2, -1)).mul_(scale if scale is not None else 1 / math.sqrt(query.size(-1)))
        if is_causal:
            mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril_()
        if mask is not None and mask.dtype == torch.bool:
            scores = scores.masked_fill(mask.logical_not(), float("-inf"))
        elif mask is not None:
            scores = scores + mask
        probs = torch.softmax(scores, dim=-1)
        if mask is not None:  # a fully masked row gives 0, as torch's math path does, not NaN
            probs = probs.nan_to_num(0.0)
        keep, inverse_rate = keep_mask(probs.shape, dropout, probs.dtype, probs.device)
        out = torch.matmul(probs * keep, value).mul_(inverse_rate)
    return out.to(dtype)


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
