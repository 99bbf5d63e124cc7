"""Bottleneck adapters on a tiny random BERT (no files, no network)."""

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from peftlab.nn.bottleneck import (
    BottleneckAdapter,
    adapter_state_dict,
    insert_bottleneck_adapters,
)

D, L = 32, 2  # hidden size, layers
HOULSBY = dict(attention_output="attention.output.dense", ffn_output="output.dense")
PFEIFFER = dict(attention_output=None, ffn_output="output.dense")


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(1))


def logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("m", [4, 8])
def test_houlsby_adds_two_adapters_per_layer(m):
    model = tiny_bert()
    before = n_params(model)
    names = insert_bottleneck_adapters(model, **HOULSBY, bottleneck_dim=m)
    assert names == [
        "bert.encoder.layer.0.attention.output.dense",
        "bert.encoder.layer.0.output.dense",
        "bert.encoder.layer.1.attention.output.dense",
        "bert.encoder.layer.1.output.dense",
    ]
    assert n_params(model) - before == 2 * L * (2 * D * m + m + D)


@pytest.mark.parametrize("m", [4, 8])
def test_pfeiffer_adds_one_ffn_adapter_per_layer(m):
    model = tiny_bert()
    before = n_params(model)
    names = insert_bottleneck_adapters(model, **PFEIFFER, bottleneck_dim=m)
    assert names == ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]
    assert n_params(model) - before == L * (2 * D * m + m + D)
    adapted = [n for n, mod in model.named_modules() if isinstance(mod, BottleneckAdapter)]
    assert adapted == [f"{n}.adapter" for n in names]


def test_suffix_matching_at_the_root_of_a_bare_layer():
    """Names equal to the suffix match too, and the nested attention projection is still skipped."""
    from transformers.models.bert.modeling_bert import BertLayer

    config = BertConfig(hidden_size=D, num_attention_heads=2, intermediate_size=64)
    pfeiffer = insert_bottleneck_adapters(BertLayer(config), **PFEIFFER, bottleneck_dim=4)
    assert pfeiffer == ["output.dense"]
    assert insert_bottleneck_adapters(BertLayer(config), **HOULSBY, bottleneck_dim=4) == [
        "attention.output.dense",
        "output.dense",
    ]


def test_adapter_modules_have_expected_shapes():
    model = tiny_bert()
    insert_bottleneck_adapters(model, **PFEIFFER, bottleneck_dim=4, activation="relu")
    adapter = model.bert.encoder.layer[0].output.dense.adapter
    assert (adapter.down.in_features, adapter.down.out_features) == (D, 4)
    assert (adapter.up.in_features, adapter.up.out_features) == (4, D)
    assert isinstance(adapter.act, nn.ReLU)
    assert torch.count_nonzero(adapter.up.weight) == 0 and torch.count_nonzero(adapter.up.bias) == 0


@pytest.mark.parametrize("layout", [HOULSBY, PFEIFFER])
def test_zero_init_keeps_logits_identical(layout, input_ids):
    model = tiny_bert()
    reference = logits(model, input_ids)
    insert_bottleneck_adapters(model, **layout, bottleneck_dim=4)
    assert torch.equal(logits(model, input_ids), reference)


def test_adapter_is_in_forward_path_and_trains(input_ids):
    model = tiny_bert()
    reference = logits(model, input_ids)
    insert_bottleneck_adapters(model, **HOULSBY, bottleneck_dim=4)
    adapters = [mod for mod in model.modules() if isinstance(mod, BottleneckAdapter)]
    with torch.no_grad():
        for adapter in adapters:
            adapter.up.weight.normal_(std=0.5)
    assert not torch.allclose(logits(model, input_ids), reference)

    model(input_ids=input_ids).logits.sum().backward()
    for adapter in adapters:
        assert adapter.down.weight.grad is not None
        assert adapter.down.weight.grad.abs().sum() > 0


def test_pretrained_parameter_names_are_unchanged():
    model = tiny_bert()
    base = {n for n, _ in model.named_parameters()}
    insert_bottleneck_adapters(model, **HOULSBY, bottleneck_dim=4)
    after = {n for n, _ in model.named_parameters()}
    assert base < after
    new = after - base
    assert len(new) == 4 * 2 * 2  # 4 adapters x {down, up} x {weight, bias}
    assert all(".adapter." in n for n in new)
    assert "bert.encoder.layer.0.output.dense.adapter.down.weight" in new


def test_adapter_state_dict_round_trip(input_ids):
    model = tiny_bert()
    insert_bottleneck_adapters(model, **HOULSBY, bottleneck_dim=4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".adapter." in n:
                p.normal_(std=0.1)
    state = adapter_state_dict(model)
    assert set(state) == {n for n, _ in model.named_parameters() if ".adapter." in n}
    assert len(state) == 16
    assert all(not t.requires_grad and t.is_contiguous() for t in state.values())

    fresh = tiny_bert()  # same seed: same base weights, zero-init adapters
    insert_bottleneck_adapters(fresh, **HOULSBY, bottleneck_dim=4)
    assert not torch.equal(logits(fresh, input_ids), logits(model, input_ids))
    result = fresh.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert all(".adapter." not in k for k in result.missing_keys)
    assert torch.equal(logits(fresh, input_ids), logits(model, input_ids))


def test_adapters_follow_linear_dtype():
    model = tiny_bert().to(torch.float64)
    insert_bottleneck_adapters(model, **PFEIFFER, bottleneck_dim=4)
    assert all(p.dtype == torch.float64 for p in adapter_state_dict(model).values())


def test_bad_activation_raises_and_leaves_model_untouched():
    with pytest.raises(ValueError, match="gelu, relu, silu, tanh"):
        BottleneckAdapter(D, 4, activation="swish")
    model = tiny_bert()
    with pytest.raises(ValueError, match="swish"):
        insert_bottleneck_adapters(model, **HOULSBY, bottleneck_dim=4, activation="swish")
    assert adapter_state_dict(model) == {}


def test_no_match_raises():
    with pytest.raises(LookupError, match="no nn.Linear or Conv1D matched.*'mlp.fc2'"):
        insert_bottleneck_adapters(
            tiny_bert(), attention_output=None, ffn_output="mlp.fc2", bottleneck_dim=4
        )


def test_double_insert_raises():
    model = tiny_bert()
    insert_bottleneck_adapters(model, **PFEIFFER, bottleneck_dim=4)
    with pytest.raises(ValueError, match="already has bottleneck adapters"):
        insert_bottleneck_adapters(model, **PFEIFFER, bottleneck_dim=4)
    assert len(adapter_state_dict(model)) == L * 4
