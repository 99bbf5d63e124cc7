"""LoRA's variants (DoRA, rsLoRA, PiSSA, LoRA+), prompt learning (prefix and prompt tuning), BitFit
and QLoRA's refusal off CUDA, on tiny models without training: exact counts against formulas,
the variants' defining property, and each refusal in one line."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DATA, compose
from test_decoders import GPT2_ALL, H, KV, LAYERS, LLAMA_ALL, lora_sum, tiny, trainable_after

from peftlab.config import validate
from peftlab.errors import ConfigError
from peftlab.methods import METHODS
from peftlab.tasks import TASKS


def applied(model: str, *overrides: str, task: str = "multi30k"):
    cfg, model_, arch = tiny(model, *overrides, task=task)
    method = METHODS.get(cfg.peft.method, "peft")(cfg.peft)
    method.check(model_, arch)
    return method, method.apply(model_, arch, total_steps=10)


def test_dora_adds_one_magnitude_per_output_feature_on_conv1d_too():
    outputs = sum(o for _, o in GPT2_ALL)  # GPT-2's Conv1D layers: c_attn, attn.c_proj, c_fc, mlp.c_proj
    assert trainable_after("dora", "tiny-gpt2", "rank=2") == LAYERS * (2 * lora_sum(GPT2_ALL) + outputs)
    assert trainable_after("rslora", "tiny-llama", "rank=2") == trainable_after("lora", "tiny-llama", "rank=2") == LAYERS * 2 * lora_sum(LLAMA_ALL)


def test_rslora_scales_by_alpha_over_the_square_root_of_r():
    _, plain = applied("tiny-llama", "peft=lora", "rank=4", "alpha=8")
    _, rs = applied("tiny-llama", "peft=rslora", "rank=4", "alpha=8")
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    assert plain.get_submodule(q).scaling["default"] == 8 / 4
    assert rs.get_submodule(q).scaling["default"] == 8 / math.sqrt(4)


def test_pissa_starts_from_the_principal_part_of_w_and_changes_nothing_at_step_zero():
    cfg, base, _ = tiny("tiny-llama", "peft=pissa")
    ids = torch.tensor([[1, 5, 9, 200, 31]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
    _, model = applied("tiny-llama", "peft=pissa", "rank=4")
    layer = model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    assert layer.lora_B["default"].weight.abs().sum() > 0  # not LoRA's B = 0: the top singular vectors
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=ids).logits, before, rtol=0, atol=1e-5)  # eval: no LoRA dropout


def test_loraplus_gives_b_its_own_learning_rate():
    method, model = applied("tiny-llama", "peft=loraplus", "rank=2", "peft.loraplus_lr_ratio=16", "lr=1e-3")
    optimizer = method.build_optimizer(model, 1e-3, 0.01, ())
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        if "lora_A" in name:
            assert rate[id(param)] == 1e-3, name
        elif "lora_B" in name:
            assert rate[id(param)] == 16e-3, name
    plain, lora = applied("tiny-llama", "peft=lora", "rank=2")
    assert {g["lr"] for g in plain.build_optimizer(lora, 1e-3, 0.01, ()).param_groups} == {1e-3}


@pytest.mark.parametrize(("model", "expected"), [
    ("tiny-llama", 20 * LAYERS * 2 * KV),  # 20 virtual keys and values per layer, of the 1 key-value head's width
    ("tiny-gpt2", 20 * LAYERS * 2 * H),
    ("tiny-t5", 20 * LAYERS * 2 * H),
])  # fmt: skip
def test_prefix_tuning_counts_keys_and_values_per_layer(model, expected):
    assert trainable_after("prefix_tuning", model) == expected


def test_prompt_tuning_counts_one_embedding_per_virtual_token():
    assert trainable_after("prompt_tuning", "tiny-llama") == 20 * H
    assert trainable_after("prompt_tuning", "tiny-t5") == 2 * 20 * H  # peft prompts T5's encoder and decoder


def test_vera_counts_two_vectors_per_layer():
    r = 256  # above the layers' width: VeRA's shared projections allow it
    assert trainable_after("vera", "tiny-llama") == LAYERS * ((r + H) + (r + KV))  # q_proj, v_proj


@pytest.mark.parametrize(("overrides", "task", "message"), [
    (["peft=prefix_tuning"], "sst2", "peft=prefix_tuning passes its trained keys and values as past_key_values, which this llama LlamaForSequenceClassification does not take"),
    (["peft=bitfit"], "multi30k", "peft=bitfit trains the bias terms, and this llama model has none"),
])  # fmt: skip
def test_methods_the_model_cannot_take_are_refused(overrides, task, message):
    with pytest.raises(ConfigError, match=message):
        applied("tiny-llama", *overrides, task=task)


def test_lokr_on_gpt2_conv1d_is_refused_as_peft_refuses_it():
    # peft 0.21's LoKr adapts Linear and Conv layers only; DoRA, LoRA, VeRA take GPT-2's Conv1D.
    with pytest.raises(ConfigError, match=r"peft cannot apply lokr to this model: Target module of type .*Conv1D.* not supported"):
        applied("tiny-gpt2", "peft=lokr")


@pytest.mark.parametrize(("task", "overrides"), [("conll2003", []), ("squad", ["task.max_length=128", "task.doc_stride=32"])])
def test_prompt_learning_is_refused_on_tasks_peft_cannot_prompt(task, overrides):
    with pytest.raises(ConfigError, match=r"is not supported by peft on this bert Bert\w+; allowed tasks: sequence classification, generation"):
        applied("tiny-bert", "peft=prompt_tuning", *overrides, task=task)


def test_prompt_tuning_needs_room_for_its_tokens_and_refuses_packing():
    from peftlab.models import check_model_fits

    cfg, model, arch = tiny("tiny-bert", "peft=prompt_tuning", task="sst2")
    method = METHODS.get(cfg.peft.method, "peft")(cfg.peft)
    task = TASKS.get(cfg.task.task, "task")(cfg.task, seed=0)
    with pytest.raises(ConfigError, match=r"task.max_length=128 is out of range for this bert model; allowed: 8 to 108, its number of positions less the method's 20 virtual tokens"):
        check_model_fits(model, _tokenizer(cfg), task, arch.profile, method.virtual_tokens())
    cfg = validate(compose("model=tiny-llama", "task=tinyshakespeare", "peft=prompt_tuning", f"data_dir={DATA}"))
    task = TASKS.get(cfg.task.task, "task")(cfg.task, seed=0)
    with pytest.raises(ConfigError, match="cannot train on packed rows: peft drops the position ids .*; allowed: task.packing=false"):
        METHODS.get(cfg.peft.method, "peft")(cfg.peft).check_task(task)


def test_t5_classification_needs_inputs_that_end_with_one_eos():
    # T5ForSequenceClassification scores each row at its last eos, found in input_ids; rows with
    # different numbers of eos tokens make transformers raise mid-batch.
    from tokenizers.processors import TemplateProcessing

    from peftlab.models import check_model_fits

    cfg, model, arch = tiny("tiny-t5", task="sst2")
    task = TASKS.get(cfg.task.task, "task")(cfg.task, seed=0)
    tok = _tokenizer(cfg)  # SmolLM2's: no eos appended, and it pads with its eos (id 2)
    with pytest.raises(ConfigError, match=r"this t5 T5ForSequenceClassification scores each input at its last eos token \(id 2\), but its tokenizer does not end inputs with it; allowed: the model's own tokenizer"):
        check_model_fits(model, tok, task, arch.profile)
    tok._tokenizer.post_processor = TemplateProcessing(single="$A <|im_end|>", pair="$A <|im_end|> $B <|im_end|>", special_tokens=[("<|im_end|>", 2)])
    with pytest.raises(ConfigError, match=r"but its tokenizer pads with that same id, so padded rows hold more of them"):
        check_model_fits(model, tok, task, arch.profile)
    tok.pad_token = "<|endoftext|>"  # id 0: now every row holds one eos, as T5's own tokenizer makes them
    check_model_fits(model, tok, task, arch.profile)
    batch = tok(["a short sentence", "a much longer sentence than the first"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)
    with pytest.raises(ConfigError, match=r"peft=prompt_tuning passes the input as embeddings, and this t5 T5ForSequenceClassification finds the eos token it scores in the token ids"):
        applied("tiny-t5", "peft=prompt_tuning", task="sst2")


def _tokenizer(cfg):
    from peftlab.models import load_tokenizer

    return load_tokenizer(cfg.model)


@pytest.mark.parametrize(("overrides", "message"), [
    (["peft=qlora"], r"peft.quantize=nf4 \(QLoRA\) loads the base in 4 bits through bitsandbytes, which needs a CUDA GPU; trainer.accelerator=cpu; allowed: trainer=gpu"),
    (["peft=qlora", "trainer=gpu", "model=tiny-llama"], r"model=tiny-llama is built at random, not loaded"),
    (["peft=qlora", "peft.quantize=int8"], r"peft.quantize='int8' is not an option; allowed: nf4, fp4, or null"),
    (["peft=lora", "peft.init=svd"], r"peft.init='svd' is not an option; allowed: default"),
    (["peft=loraplus", "peft.loraplus_lr_ratio=0.5"], r"peft.loraplus_lr_ratio=0.5 is out of range; it must be >= 1"),
])  # fmt: skip
def test_bad_variant_settings_are_refused_before_torch_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(*overrides, f"data_dir={DATA}"))
