"""transformers' sdpa attention with the fast dropout mask (peftlab.nn.attention): torch's math path
to float rounding given the same mask, transformers' function wherever it does not apply, the same
model outputs as sdpa (encoder and a causal decoder with grouped-query attention)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from peftlab.nn import attention
from peftlab.nn.dropout import keep_mask

P = 0.1


def reference(q, k, v, mask, is_causal, keep):
    """torch's own math path, given the keep mask (its bool attn_mask must come as an additive one)."""
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape).masked_fill(mask.logical_not(), float("-inf"))
    out, _ = torch.ops.aten._scaled_dot_product_attention_math(q, k, v, mask, P, is_causal, keep.bool())
    return out


@pytest.mark.parametrize("case", ["padding", "causal", "additive", "bf16"])
def test_math_attention_is_torchs_math_path_given_the_same_mask(case):
    torch.manual_seed(0)
    dtype = torch.bfloat16 if case == "bf16" else torch.float32
    q, k, v = (torch.randn(2, 3, 5, 8).to(dtype) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, :, :, 3:] = False  # padding
    mask[0, :, 2, :] = False  # a fully masked row: 0 out, not NaN
    mask = {"causal": None, "additive": torch.randn(2, 1, 5, 5)}.get(case, mask)
    torch.manual_seed(1)
    ours = attention.math_attention(q, k, v, mask, P, case == "causal", None)
    torch.manual_seed(1)
    keep, inverse_rate = keep_mask(torch.Size([2, 3, 5, 5]), P, torch.float32, q.device)
    # torch scales by 1 / 0.9, the fast mask by its exact keep rate (1 / (1 - 6554/65536)).
    expected = reference(q, k, v, mask, case == "causal", keep).float() * (1 - P) * inverse_rate
    assert ours.dtype == dtype and not ours.isnan().any()
    assert torch.allclose(ours.float(), expected, rtol=0, atol=1e-2 if dtype == torch.bfloat16 else 1e-6)


def tiny_bert(implementation: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=1e-6, attn_implementation=implementation)  # fmt: skip
    return BertForSequenceClassification(config).train()


def count_math_calls(monkeypatch) -> list:
    calls = []
    math = attention.math_attention
    monkeypatch.setattr(attention, "math_attention", lambda *a: calls.append(a[0].shape) or math(*a))
    return calls


def test_bert_trains_through_it_as_through_sdpa_and_evaluates_through_sdpa(monkeypatch):
    """p = 1e-6 keeps every element in both masks, so the outputs must agree."""
    calls = count_math_calls(monkeypatch)
    sdpa, fast = tiny_bert("sdpa"), tiny_bert("sdpa")
    assert attention.use_fast_dropout_attention(fast) and fast.config._attn_implementation == attention.NAME
    ids = torch.tensor([[5, 17, 42, 9, 3], [8, 64, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    train = [m(input_ids=ids, attention_mask=mask).logits for m in (sdpa, fast)]
    assert len(calls) == 2 and calls[0] == (2, 4, 5, 8)  # each block, (batch, heads, length, head dim)
    assert torch.allclose(train[0], train[1], atol=1e-5)
    evaluated = [m.eval()(input_ids=ids, attention_mask=mask).logits for m in (sdpa, fast)]
    assert len(calls) == 2 and torch.equal(evaluated[0], evaluated[1])  # eval: transformers' sdpa, bit for bit


def test_a_causal_decoder_with_grouped_query_attention_agrees_with_sdpa(monkeypatch):
    calls = count_math_calls(monkeypatch)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, attention_dropout=1e-6, attn_implementation="sdpa")  # fmt: skip
        models.append(LlamaForCausalLM(config).train())
    assert attention.use_fast_dropout_attention(models[1])
    ids = torch.tensor([[5, 17, 42, 9, 3], [0, 0, 8, 64, 2]])
    for mask in (None, torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])):  # causal alone; causal and left padding
        sdpa, fast = (m(input_ids=ids, attention_mask=mask).logits for m in models)
        real = slice(None) if mask is None else mask.bool()
        assert torch.allclose(sdpa[real], fast[real], atol=1e-5)
    assert len(calls) == 4


def test_models_on_another_attention_are_left_alone_and_the_name_is_not_saved(tmp_path):
    eager = tiny_bert("eager")
    assert not attention.use_fast_dropout_attention(eager) and eager.config._attn_implementation == "eager"
    fast = tiny_bert("sdpa")
    attention.use_fast_dropout_attention(fast)
    fast.save_pretrained(tmp_path)  # full fine-tuning saves the model: it must reload without peftlab
    assert attention.NAME not in json.dumps(json.loads((tmp_path / "config.json").read_text()))


def test_the_masks_bias_is_built_once_per_mask_and_again_when_it_changes():
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[1, :, :, 2:] = False
    bias, empty = attention._additive_mask(mask, False, 2, 3, 4, 4, torch.float32)
    assert bias.shape == (6, 4, 4) and not empty
    assert torch.equal(bias[3:], torch.tensor([0.0, 0.0, float("-inf"), float("-inf")]).expand(3, 4, 4))
    assert attention._additive_mask(mask, False, 2, 3, 4, 4, torch.float32)[0] is bias  # the next layer's call: the same bias
    mask[0, :, 1, :] = False  # changed in place: a row that attends to nothing
    again, empty = attention._additive_mask(mask, False, 2, 3, 4, 4, torch.float32)
    assert again is not bias and empty and torch.isneginf(again[0, 1]).all()
    causal, empty = attention._additive_mask(None, True, 1, 1, 3, 3, torch.float32)
    assert torch.equal(causal[0].isneginf(), torch.ones(3, 3, dtype=torch.bool).triu(1)) and not empty
