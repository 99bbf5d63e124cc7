"""Architecture profiles: every profiled model_type, on a tiny random model of its own, gets LoRA on
all its linear layers and bottleneck adapters in the right places, with exact parameter counts."""

from __future__ import annotations

import pytest
from conftest import DATA, compose, train_tiny

from peftlab.architectures import PROFILES, architecture_of
from peftlab.config import validate
from peftlab.errors import ConfigError
from peftlab.methods import METHODS
from peftlab.models import count_parameters, load_model
from peftlab.tasks import TASKS

H, I, LAYERS, LABELS = 32, 64, 2, 2  # the tiny models' width, feed-forward width, depth; SST-2's labels
# Trainable head parameters: BERT's classifier is one Linear; the others put a hidden layer first.
HEADS = {
    "bert": H * LABELS + LABELS,
    "roberta": (H * H + H) + (H * LABELS + LABELS),  # classifier.dense + classifier.out_proj
    "electra": (H * H + H) + (H * LABELS + LABELS),
    "deberta-v2": (H * H + H) + (H * LABELS + LABELS),  # pooler.dense (new with the head) + classifier
    "distilbert": (H * H + H) + (H * LABELS + LABELS),  # pre_classifier + classifier
}
MODELS = {"bert": "tiny-bert", "roberta": "tiny-roberta", "electra": "tiny-electra", "deberta-v2": "tiny-deberta", "distilbert": "tiny-distilbert"}


def tiny(model_type: str, *overrides: str):
    cfg = validate(compose(f"model={MODELS[model_type]}", f"data_dir={DATA}", *overrides))
    task = TASKS.get(cfg.task.task, "task")(cfg.task, seed=0)
    model = load_model(cfg.model, task)
    return cfg, model, architecture_of(model, cfg.model.targets)


def test_every_encoder_profile_has_a_tiny_model_here():  # decoders: tests/test_decoders.py
    assert {t for t, p in PROFILES.items() if p.family == "encoder"} == set(MODELS)


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_lora_on_all_linear_layers_counts_against_its_formula(model_type):
    cfg, model, arch = tiny(model_type, "peft=lora", "rank=4")
    assert arch.model_type == model_type
    method = METHODS.get("lora", "peft")(cfg.peft)
    method.check(model, arch)
    adapted = method.apply(model, arch, total_steps=10)
    r = 4
    # Per block: q, k, v and the attention output (H x H each) and the two feed-forward layers
    # (H x I, I x H): r (in + out) each.
    per_block = 4 * r * (H + H) + 2 * r * (H + I)
    assert count_parameters(adapted)["trainable"] == LAYERS * per_block + HEADS[model_type]


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_houlsby_adapters_sit_after_both_sub_layers(model_type):
    cfg, model, arch = tiny(model_type, "peft=adapter", "rank=4")
    method = METHODS.get("adapter", "peft")(cfg.peft)
    method.check(model, arch)
    adapted = method.apply(model, arch, total_steps=10)
    b = 4
    per_adapter = (H * b + b) + (b * H + H)  # down and up projections
    assert count_parameters(adapted)["trainable"] == LAYERS * 2 * per_adapter + HEADS[model_type]
    assert method.settings(adapted, arch)["attention_output"] == arch.profile.attention_output


@pytest.mark.parametrize("model_type", ["distilbert", "deberta-v2"])
def test_other_architectures_train_and_record_what_ran(tmp_path, model_type, sst2_available):
    run = train_tiny(tmp_path, f"model={MODELS[model_type]}", "peft=lora", "rank=4")
    assert run.record.model.model_type == model_type
    assert run.record.method.settings["target_modules"] == list(PROFILES[model_type].all_linear)
    assert run.record.method.settings["r"] == 4


def test_a_model_without_a_profile_needs_targets(sst2_available):
    cfg, model, _ = tiny("bert")
    model.config.model_type = "mystery"
    with pytest.raises(ConfigError, match="no architecture profile for model_type 'mystery'; allowed: bert, deberta-v2"):
        architecture_of(model, {})
    with pytest.raises(ConfigError, match="model.targets: 'mystery' has no profile, so give every key; missing: all_linear"):
        architecture_of(model, {"attention": ["query", "value"]})
    arch = architecture_of(model, {k: list(v) if isinstance(v, tuple) else v for k, v in vars(PROFILES["bert"]).items()})
    assert arch.expand("attention", "peft.target_modules") == ["query", "value"]


def test_model_targets_override_one_set_of_a_profile(sst2_available):
    _, model, _ = tiny("bert")
    arch = architecture_of(model, {"attention": ["query", "key"]})
    assert arch.expand("attention", "x") == ["query", "key"]
    assert arch.expand("all_linear", "x") == list(PROFILES["bert"].all_linear)
