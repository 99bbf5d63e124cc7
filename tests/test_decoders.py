"""Decoder and encoder-decoder profiles: every method on tiny random LLaMA, Qwen2, GPT-2 (Conv1D
layers) and T5 (v1.0 and the gated v1.1 / FLAN-T5 block), with exact trainable counts against
formulas; no training, so these are quick."""

from __future__ import annotations

import pytest
from conftest import DATA, compose

from peftlab.architectures import PROFILES, architecture_of
from peftlab.config import validate
from peftlab.errors import ConfigError
from peftlab.methods import METHODS
from peftlab.models import count_parameters, load_model
from peftlab.tasks import TASKS

# The tiny decoders: width 32, feed-forward 64 (GPT-2: 4 x 32), 2 layers, 2 heads of 16, LLaMA and
# Qwen2 with 1 key-value head (so k and v project 32 -> 16).
H, LAYERS, KV = 32, 2, 16
DECODERS = {"llama": "tiny-llama", "qwen2": "tiny-qwen2", "gpt2": "tiny-gpt2", "t5": "tiny-t5"}


def tiny(model: str, *overrides: str, task: str = "multi30k"):
    cfg = validate(compose(f"model={model}", f"task={task}", f"data_dir={DATA}", *overrides))
    task_ = TASKS.get(cfg.task.task, "task")(cfg.task, seed=0)
    model_ = load_model(cfg.model, task_)
    return cfg, model_, architecture_of(model_, cfg.model.targets)


def trainable_after(method_name: str, model: str, *overrides: str, task: str = "multi30k") -> int:
    cfg, model_, arch = tiny(model, f"peft={method_name}", *overrides, task=task)
    method = METHODS.get(cfg.peft.method, "peft")(cfg.peft)
    method.check(model_, arch)
    return count_parameters(method.apply(model_, arch, total_steps=10))["trainable"]


def lora_sum(layers: list[tuple[int, int]]) -> int:
    """sum of (in + out) over the adapted layers of one block: LoRA adds r (in + out) to each."""
    return sum(i + o for i, o in layers)


LLAMA_ALL = [(H, H), (H, KV), (H, KV), (H, H), (H, 64), (H, 64), (64, H)]  # q k v o gate up down
GPT2_ALL = [(H, 3 * H), (H, H), (H, 4 * H), (4 * H, H)]  # c_attn, attn.c_proj, c_fc, mlp.c_proj
T5_ENCODER = [(H, H)] * 4 + [(H, 64), (64, H)]  # q k v o, wi wo
T5_DECODER = [(H, H)] * 8 + [(H, 64), (64, H)]  # self and cross attention, wi wo
T5_GATED_ENCODER = [(H, H)] * 4 + [(H, 64), (H, 64), (64, H)]  # wi_0 wi_1 wo
T5_GATED_DECODER = [(H, H)] * 8 + [(H, 64), (H, 64), (64, H)]


def test_every_decoder_profile_has_a_tiny_model():
    assert {t for t, p in PROFILES.items() if p.family != "encoder"} == set(DECODERS)
    assert PROFILES["gpt2"].fan_in_fan_out and PROFILES["t5"].family == "encoder-decoder"


@pytest.mark.parametrize(("model_type", "per_model"), [
    ("llama", LAYERS * lora_sum(LLAMA_ALL)),
    ("qwen2", LAYERS * lora_sum(LLAMA_ALL)),
    ("gpt2", LAYERS * lora_sum(GPT2_ALL)),
    ("t5", LAYERS * (lora_sum(T5_ENCODER) + lora_sum(T5_DECODER))),
])  # fmt: skip
def test_lora_all_linear_on_decoders_counts_against_its_formula(model_type, per_model):
    assert trainable_after("lora", DECODERS[model_type], "rank=4") == 4 * per_model


def test_flan_t5_gated_feed_forward_is_covered_by_the_same_profile():
    # T5 v1.1 / FLAN-T5 name the gated block's layers wi_0 and wi_1: the target set keeps the names the model has.
    per_model = LAYERS * (lora_sum(T5_GATED_ENCODER) + lora_sum(T5_GATED_DECODER))
    assert trainable_after("lora", "tiny-t5", "rank=2", "model.random_init.feed_forward_proj=gated-gelu") == 2 * per_model


@pytest.mark.parametrize(("model", "adapters"), [("tiny-llama", 2 * LAYERS), ("tiny-gpt2", 2 * LAYERS), ("tiny-t5", 2 * 2 * LAYERS)])
def test_houlsby_adapters_on_decoders(model, adapters):
    # One after attention and one after the feed-forward block of every block (T5: encoder and
    # decoder blocks); GPT-2's are Conv1D layers.
    b = 4
    assert trainable_after("adapter", model, f"rank={b}") == adapters * ((H * b + b) + (b * H + H))


@pytest.mark.parametrize(("model", "expected"), [
    ("tiny-llama", LAYERS * (KV + KV + 64)),  # k_proj, v_proj outputs; down_proj's input (feed-forward)
    ("tiny-gpt2", LAYERS * (3 * H + 4 * H)),  # c_attn's output; mlp.c_proj's input
    ("tiny-t5", LAYERS * ((H + H + 64) + (4 * H + 64))),  # k, v (+ cross-attention's in the decoder); wo's input
])  # fmt: skip
def test_ia3_on_decoders(model, expected):
    assert trainable_after("ia3", model) == expected


def test_loha_adalora_and_full_on_llama():
    r = 2
    assert trainable_after("loha", "tiny-llama", f"rank={r}") == LAYERS * 2 * r * ((H + H) + (H + KV))  # q, v: two factor pairs
    init_r = 3  # ceil(1.5 * 2)
    # A (init_r x in), B (out x init_r) and E (init_r) on every linear layer
    assert trainable_after("adalora", "tiny-llama", f"rank={r}") == LAYERS * sum(init_r * (i + o + 1) for i, o in LLAMA_ALL)
    cfg, model, _ = tiny("tiny-llama")
    assert trainable_after("full", "tiny-llama") == count_parameters(model)["total"]


def test_decoder_sequence_classification_trains_the_score_head():
    # LlamaForSequenceClassification reads the last non-pad token; its `score` head is new and trains.
    cfg, model, arch = tiny("tiny-llama", task="sst2")
    assert type(model).__name__ == "LlamaForSequenceClassification" and arch.profile.head_modules(model) == ["score"]
    assert model.config.pad_token_id == 2
    assert trainable_after("linear_probe", "tiny-llama", task="sst2") == H * 2  # score: no bias


def test_linear_probe_is_refused_on_generation_tasks():
    with pytest.raises(ConfigError, match="peft=linear_probe trains a new task head, and this llama LlamaForCausalLM has none"):
        trainable_after("linear_probe", "tiny-llama")


def test_a_generation_task_on_an_encoder_is_refused():
    with pytest.raises(ConfigError, match=r"task multi30k generates text, which an encoder-only model \(bert\) cannot"):
        tiny("tiny-bert")


def test_language_modelling_on_an_encoder_decoder_is_refused():
    with pytest.raises(ConfigError, match=r"task tinyshakespeare has no prompt .* this t5 encoder-decoder needs a source text to encode"):
        tiny("tiny-t5", "task.packing=false", task="tinyshakespeare")


def test_packing_on_an_encoder_decoder_is_refused():
    with pytest.raises(ConfigError, match="task.packing=true packs decoder sequences; this t5 model is an encoder-decoder"):
        tiny("tiny-t5", "task.packing=true")


@pytest.mark.parametrize(("preset", "model_type"), [
    ("llama-3.2-1b", "llama"), ("qwen2.5-0.5b", "qwen2"), ("gpt2", "gpt2"), ("t5-small", "t5"), ("flan-t5-base", "t5"),
])  # fmt: skip
def test_hub_presets_need_no_targets_block(preset, model_type):
    # Offline, the hub config cannot be fetched: the preset composes with no targets block, and the
    # architecture its hub model has (the model_type above) is profiled, as the tiny models show.
    cfg = validate(compose(f"model={preset}", "task=alpaca", f"data_dir={DATA}"))
    assert cfg.model.targets == {} and cfg.model.name == preset and "/" in cfg.model.name_or_path
    assert model_type in PROFILES and PROFILES[model_type].family != "encoder"
