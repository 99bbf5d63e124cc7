"""The fused LoRA training forward (peftlab.nn.fused_lora) against peft's own: the same outputs and
gradients (to float rounding in fp32, within bf16's under autocast), peft's forward wherever the
fused one does not apply, and the frozen weight's cast copy dropped whenever the weight may change."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from transformers import BertConfig, BertForSequenceClassification

from peftlab.nn.dropout import keep_mask, use_fast_dropout
from peftlab.nn import fused_lora
from peftlab.nn.fused_lora import FusedLoraLinear, use_fused_lora

IDS = torch.tensor([[5, 17, 42, 9, 3, 77, 1], [8, 8, 64, 2, 31, 90, 11], [4, 6, 1, 0, 0, 0, 0]])
LABELS = torch.tensor([0, 1, 1])


def lora_model(fast_dropout: bool = True, **lora) -> torch.nn.Module:
    """A tiny BERT with LoRA on every Linear and B non-zero (so the LoRA path shows in the output)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, attention_probs_dropout_prob=0.0)  # fmt: skip
    options = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]} | lora
    model = get_peft_model(BertForSequenceClassification(config), LoraConfig(**options))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    if fast_dropout:
        use_fast_dropout(model)
    return model.train()


def fused_copy(model: torch.nn.Module) -> torch.nn.Module:
    fused = copy.deepcopy(model)
    assert use_fused_lora(fused) == 13  # q, k, v, attention output, intermediate, output x 2 blocks + the pooler
    return fused


def step(model: torch.nn.Module, autocast: bool = False, seed: int = 5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the gradients of what trains, after one forward and backward pass from `seed`."""
    torch.manual_seed(seed)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(input_ids=IDS, labels=LABELS)
    out.loss.backward()
    return out.logits.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_fused_forward_is_pefts_in_fp32_with_the_same_masks():
    plain = lora_model()
    logits, grads = step(plain)
    fused_logits, fused_grads = step(fused_copy(plain))
    assert grads.keys() == fused_grads.keys() and len(grads) == 26  # A and B of 13 layers
    assert torch.allclose(fused_logits, logits, rtol=0, atol=1e-6)
    for name in grads:
        assert relative_error(fused_grads[name], grads[name]) < 1e-5, name


def test_fused_forward_stays_within_bf16_rounding_of_pefts_under_autocast():
    plain = lora_model()
    logits, grads = step(plain, autocast=True)
    fused_logits, fused_grads = step(fused_copy(plain), autocast=True)
    # Tolerance: bf16 keeps 8 bits (0.4%): the logits to 1e-2, each gradient to 5% of its norm.
    assert torch.allclose(fused_logits, logits, rtol=0, atol=1e-2)
    for name in grads:
        assert relative_error(fused_grads[name], grads[name]) < 0.05, name
    # Against fp32, the fused bf16 step is no further off than peft's own bf16 step (1.5x for rounding luck).
    exact_logits, _ = step(plain)
    assert (fused_logits - exact_logits).abs().max() <= 1.5 * (logits - exact_logits).abs().max() + 1e-3


def test_torchs_dropout_gives_a_bernoulli_keep_mask_scaled_in_the_addmm():
    plain = lora_model(fast_dropout=False)
    layer = fused_copy(plain).base_model.model.bert.encoder.layer[0].attention.self.query
    assert type(layer) is FusedLoraLinear and type(layer.lora_dropout["default"]) is torch.nn.Dropout
    x = torch.randn(3, 7, 32)
    torch.manual_seed(11)
    out = layer(x)
    torch.manual_seed(11)
    keep, inverse_rate = keep_mask(x.shape, 0.1, x.dtype, x.device, fast=False)
    assert inverse_rate == pytest.approx(1 / 0.9) and 0.8 < keep.float().mean() < 1.0
    lora = layer.lora_B["default"](layer.lora_A["default"](x * keep)) * layer.scaling["default"] * inverse_rate
    assert torch.allclose(out, layer.base_layer(x) + lora, atol=1e-6)


@pytest.mark.parametrize("case", ["eval", "merged", "dora", "two adapters"])
def test_peft_forward_runs_where_the_fused_one_does_not_apply(case):
    plain = lora_model(use_dora=case == "dora")
    fused = fused_copy(plain)
    for model in (plain, fused):
        if case == "eval":
            model.eval()
        if case == "merged":
            model.merge_adapter()
        if case == "two adapters":
            model.add_adapter("second", LoraConfig(r=2, target_modules=["query"]))
            model.base_model.set_adapter(["default", "second"])
            model.train()
    outputs = []
    for model in (plain, fused):
        torch.manual_seed(3)
        with torch.no_grad():
            outputs.append(model(input_ids=IDS).logits)
    assert torch.equal(outputs[0], outputs[1])  # bit for bit: the same code ran


def test_use_fused_lora_leaves_other_layers_and_the_state_dict_alone():
    plain = lora_model()
    fused = fused_copy(plain)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(fused.state_dict()[k], v) for k, v in plain.state_dict().items())
    assert {type(m) for m in fused.modules() if isinstance(m, LoraLinear)} == {FusedLoraLinear}
    merged = fused.merge_and_unload()  # peft's unloading still finds its layers
    assert not any(isinstance(m, LoraLinear) for m in merged.modules())


def test_the_frozen_weights_bf16_copy_is_kept_until_the_weight_may_change():
    layer = fused_copy(lora_model()).base_model.model.bert.encoder.layer[0].intermediate.dense
    x = torch.randn(3, 7, 32)

    def forward() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return layer(x)

    forward()
    cast = layer._frozen_cast[1]
    assert cast.dtype == torch.bfloat16 and torch.equal(cast, layer.base_layer.weight.to(torch.bfloat16))
    forward()
    assert layer._frozen_cast[1] is cast  # cast once, not on every call
    with torch.no_grad():
        layer.base_layer.weight.mul_(2)  # an in-place change bumps the weight's version: cast again
    forward()
    assert torch.equal(layer._frozen_cast[1], layer.base_layer.weight.to(torch.bfloat16))
    for drop in (layer.train, layer.eval, layer.merge):  # peft merges through .data, unseen by the version
        layer.train()
        forward()
        assert layer._frozen_cast is not None
        drop()
        assert layer._frozen_cast is None
    layer._frozen_cast = ("a cast copy",)
    layer.unmerge()
    assert layer._frozen_cast is None
    layer.train()
    assert layer(x).dtype == torch.float32 and layer._frozen_cast is None  # outside autocast: no copy


def test_layers_reading_one_input_share_its_cast_and_its_gradient():
    block = fused_copy(lora_model()).base_model.model.bert.encoder.layer[0].attention.self
    layers = (block.query, block.key, block.value)
    x = torch.randn(3, 7, 32, requires_grad=True)

    def grad_of_x(shared: bool) -> torch.Tensor:
        torch.manual_seed(1)  # the same three dropout masks either way
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = []
            for layer in layers:
                if not shared:
                    fused_lora._last_cast[0] = None
                outputs.append(layer(x))
        sum(out.float().sum() for out in outputs).backward()
        return x.grad.clone()

    separate = grad_of_x(shared=False)
    shared = grad_of_x(shared=True)
    cast = fused_lora._last_cast[0][4]
    assert cast.dtype == torch.bfloat16 and torch.equal(cast, x.detach().to(torch.bfloat16))
    # The three gradients meet in bf16 at the one cast, not in fp32 after three: within bf16's rounding.
    assert relative_error(shared, separate) < 1e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        block.query(x)
        assert fused_lora._last_cast[0][4] is cast  # the same tensor again: no new cast
        block.query(x.detach().clone())  # equal values, another tensor: cast afresh
        assert fused_lora._last_cast[0][4] is not cast
        cast = fused_lora._last_cast[0][4]
        with torch.no_grad():
            x.mul_(2)  # an in-place change bumps the version: cast again
        block.query(x)
        assert fused_lora._last_cast[0][4] is not cast
        assert torch.equal(fused_lora._last_cast[0][4], x.detach().to(torch.bfloat16))
    block.query.eval()  # a new phase drops the cast copy, with the graph it holds
    assert fused_lora._last_cast[0] is None


@pytest.mark.parametrize("autocast", [False, True])
def test_trainable_base_biases_get_pefts_gradients_through_the_fused_layer(autocast):
    plain = lora_model(bias="all")  # peft trains every bias, the base layers' too
    logits, grads = step(plain, autocast=autocast)
    fused_logits, fused_grads = step(fused_copy(plain), autocast=autocast)
    biases = [n for n in grads if n.endswith("base_layer.bias")]
    assert len(biases) == 13 and grads.keys() == fused_grads.keys()
    assert all(fused_grads[n].dtype == torch.float32 for n in grads)  # in the parameters' own dtype
    tolerance = 0.05 if autocast else 1e-5
    for name in grads:
        if ".key.base_layer.bias" in name:  # the softmax cancels it: its gradient is 0 up to rounding
            assert fused_grads[name].abs().max() < 1e-6 and grads[name].abs().max() < 1e-6
        else:
            assert relative_error(fused_grads[name], grads[name]) < tolerance, name
