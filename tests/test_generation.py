"""The generation family: loss masking, packing, batched generation, every task on tiny decoders and
T5, evaluation regenerating training's answers, the text metrics, and the bad inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import DATA, compose, one_line_failure, train_tiny

from peftlab.config import validate
from peftlab.errors import ConfigError, DataError
from peftlab.models import load_model, load_tokenizer
from peftlab.outputs import METRICS_FILE
from peftlab.tasks import TASKS
from peftlab.tasks.generation import IGNORE, GenerationCollator, pack

# A tiny generation run: 32 training examples, 8 scored, 4 of them generated for (6 new tokens).
GEN = ["task.max_train_samples=32", "task.max_eval_samples=8", "task.generate_samples=4", "task.max_new_tokens=6",
       "trainer.eval_batch_size=4"]  # fmt: skip
LM = GEN[:2] + GEN[4:]  # language modelling generates nothing
EOS = 2  # SmolLM2's <|im_end|>, which the tiny models' borrowed tokenizer ends every target with


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def qa_files(tmp_path, records=None):
    records = records or [{"instruction": "Capital of France?", "input": "", "output": "Paris"},
                          {"instruction": "Two plus two?", "input": "", "output": "Four, of course"}] * 4  # fmt: skip
    train = write_jsonl(tmp_path / "train.jsonl", records)
    return [f"task.train_file={train}", f"task.validation_file={train}"]


def task_and_tokenizer(model: str, *overrides: str):
    cfg = validate(compose(f"model={model}", f"data_dir={DATA}", *overrides))
    task = TASKS.get(cfg.task.task, "task")(cfg.task, seed=0)
    return cfg, task, load_tokenizer(cfg.model)


# -- what the loss sees ------------------------------------------------------------------------
def test_decoder_labels_cover_the_target_and_its_eos_only(tmp_path):
    _, task, tok = task_and_tokenizer("tiny-llama", "task=instruction_files", *qa_files(tmp_path),
                                      "task.prompt='Q: {instruction} A:'", "task.target=' {output}'", "task.prompt_no_input=null")  # fmt: skip
    task.for_model("decoder", "llama")
    first, second = task.encode_train(task.examples("train")[:2], tok)
    prompt = tok("Q: Capital of France? A:")["input_ids"]
    assert first["input_ids"][: len(prompt)] == prompt
    assert first["labels"][: len(prompt)] == [IGNORE] * len(prompt)
    learned = [t for t in first["labels"] if t != IGNORE]
    assert tok.decode(learned) == " Paris<|im_end|>" and learned[-1] == EOS
    assert first["input_ids"] == prompt + learned  # the target follows the prompt, in the same sequence

    batch = GenerationCollator(tok.pad_token_id)([first, second])
    width = len(second["input_ids"])
    assert len(first["input_ids"]) < width  # so the first is padded: ids with the pad, labels with -100
    pad = width - len(first["input_ids"])
    assert batch["input_ids"][0].tolist() == first["input_ids"] + [tok.pad_token_id] * pad
    assert batch["labels"][0].tolist() == first["labels"] + [IGNORE] * pad
    assert batch["attention_mask"][0].tolist() == [1] * len(first["input_ids"]) + [0] * pad
    assert int(task.loss_weight(batch)) == len(learned) + len([t for t in second["labels"] if t != IGNORE])


def test_encoder_decoder_gets_the_prompt_as_input_and_the_target_as_labels(tmp_path):
    _, task, tok = task_and_tokenizer("tiny-t5", "task=instruction_files", *qa_files(tmp_path),
                                      "task.prompt='Q: {instruction}'", "task.target='{output}'", "task.prompt_no_input=null")  # fmt: skip
    task.for_model("encoder-decoder", "t5")
    (example,) = task.encode_train(task.examples("train")[:1], tok)
    assert example["input_ids"] == tok("Q: Capital of France?")["input_ids"]
    assert tok.decode(example["labels"]) == "Paris<|im_end|>"


def test_chat_template_makes_the_prompt_the_user_turn(tmp_path):
    _, task, tok = task_and_tokenizer("tiny-llama", "task=instruction_files", *qa_files(tmp_path), "task.chat_template=true",
                                      "task.prompt='Q: {instruction}'", "task.prompt_no_input=null")  # fmt: skip
    task.for_model("decoder", "llama")
    (example,) = task.encode_train(task.examples("train")[:1], tok)
    prompt_end = example["labels"].index(next(t for t in example["labels"] if t != IGNORE))
    text = tok.decode(example["input_ids"][:prompt_end])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>user\nQ: Capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(example["input_ids"][prompt_end:]) == "Paris<|im_end|>"  # the answer ends the assistant's turn


def test_packing_restarts_positions_and_masks_each_first_label():
    examples = [
        {"input_ids": [11, 12, 13], "labels": [IGNORE, 12, 13]},
        {"input_ids": [21, 22], "labels": [IGNORE, 22]},
        {"input_ids": [31, 32, 33, 34], "labels": [31, 32, 33, 34]},  # all target (language modelling)
    ]
    rows = pack(examples, max_length=6)
    assert rows == [
        {"input_ids": [11, 12, 13, 21, 22], "labels": [IGNORE, 12, 13, IGNORE, 22], "position_ids": [0, 1, 2, 0, 1], "num_examples": 2},
        {"input_ids": [31, 32, 33, 34], "labels": [IGNORE, 32, 33, 34], "position_ids": [0, 1, 2, 3], "num_examples": 1},
    ]
    batch = GenerationCollator(pad_token_id=2)(rows)
    assert "attention_mask" not in batch  # the position ids delimit the examples
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]  # padding: an example of its own
    assert batch["labels"].tolist()[1] == [IGNORE, 32, 33, 34, IGNORE]
    assert int(batch["num_examples"]) == 3 and int(batch["num_tokens"]) == 9


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_packed_rows_keep_attention_inside_each_example(model):
    cfg, task, _ = task_and_tokenizer(model, "task=multi30k")
    net = load_model(cfg.model, task).eval()
    a, b = [5, 6, 7, 8], [9, 10, 11]
    with torch.no_grad():
        alone = [net(input_ids=torch.tensor([ids]), use_cache=False).logits[0] for ids in (a, b)]
        packed = net(input_ids=torch.tensor([a + b]), position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2]]), use_cache=False).logits[0]
    assert torch.allclose(packed[:4], alone[0], atol=1e-5) and torch.allclose(packed[4:], alone[1], atol=1e-5)


@pytest.mark.parametrize(("model", "family"), [("tiny-llama", "decoder"), ("tiny-t5", "encoder-decoder")])
def test_left_padded_batched_generation_equals_one_by_one(model, family):
    cfg, task, tok = task_and_tokenizer(model, "task=multi30k", "task.max_new_tokens=8")
    task.for_model(family, cfg.model.random_init["config_class"])
    task.tokenizer = tok
    net = load_model(cfg.model, task).double().eval()  # float64: no near-tie flips with the padding's rounding
    prompts = [[100, 200, 300], [5, 6, 7, 8, 9, 10, 11], [40, 41, 42, 43, 44]]
    features = [{"input_ids": p, "labels": [1], "prompt_ids": p, "example_id": i} for i, p in enumerate(prompts)]
    batch = GenerationCollator(tok.pad_token_id)(features)
    assert batch["prompt_ids"][0].tolist() == [tok.pad_token_id] * 4 + prompts[0]  # left-padded
    with torch.no_grad():
        together = task.generate(net, batch["prompt_ids"], batch["prompt_mask"])
        alone = [task.generate(net, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long))[0] for p in prompts]
    assert [t.tolist() for t in together] == [t.tolist() for t in alone]
    assert all(len(t) >= 1 for t in together)


@pytest.mark.parametrize("method", ["prefix_tuning", "prompt_tuning"])
@pytest.mark.parametrize(("model", "family"), [("tiny-llama", "decoder"), ("tiny-gpt2", "decoder"), ("tiny-t5", "encoder-decoder")])
def test_prompt_learning_generates_what_its_forward_pass_predicts(model, family, method):
    """Every generated token's score is the model's own forward pass over the prompt and the tokens
    so far, virtual tokens included: transformers 5's `cache` reaches peft (route_generation_cache),
    so the prefix is not dropped and prompt tuning's tokens are not inserted twice."""
    from peftlab.architectures import architecture_of
    from peftlab.methods import METHODS

    cfg, task, tok = task_and_tokenizer(model, "task=multi30k", f"peft={method}")
    task.for_model(family, cfg.model.random_init["config_class"])
    net = load_model(cfg.model, task)
    net = METHODS.get(cfg.peft.method, "peft.method")(cfg.peft).apply(net, architecture_of(net, cfg.model.targets), 1).eval()
    prompt = torch.tensor([[100, 200, 300, 400, 500]])
    mask = torch.ones_like(prompt)
    with torch.no_grad():
        out = net.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=3, do_sample=False,
                           output_scores=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)  # fmt: skip
        for step, scores in enumerate(out.scores):
            if family == "decoder":
                so_far = out.sequences[:, : prompt.shape[1] + step]
                logits = net(input_ids=so_far, attention_mask=torch.ones_like(so_far)).logits[:, -1]
            else:
                logits = net(input_ids=prompt, attention_mask=mask, decoder_input_ids=out.sequences[:, : step + 1]).logits[:, -1]
            torch.testing.assert_close(scores, logits, rtol=0, atol=1e-5)


# -- every task, trained ------------------------------------------------------------------------
TASK_RUNS = {
    # Short sequences: with a 49,152-word vocabulary the tiny models' time goes to the logits.
    "alpaca": ["task=alpaca", "task.file=alpaca_en_demo.json", "task.validation_size=50", "task.max_length=256",
               "task.max_train_samples=16"],
    "dialogsum": ["task=dialogsum", "task.max_train_samples=8", "task.max_eval_samples=4", "task.max_new_tokens=4"],
    "multi30k": ["task=multi30k"],
    "tinyshakespeare": ["task=tinyshakespeare"],
    "instruction_files": ["task=instruction_files"],  # + the files qa_files writes
}
METRICS = {"alpaca": {"rougeL", "perplexity"}, "dialogsum": {"rouge1", "rouge2", "rougeL", "perplexity"},
           "multi30k": {"bleu", "chrf", "perplexity"}, "tinyshakespeare": {"perplexity"},
           "instruction_files": {"rougeL", "perplexity"}}  # fmt: skip
RUNS = [(task, "tiny-llama", "lora") for task in TASK_RUNS] + [
    ("alpaca", "tiny-qwen2", "full"), ("dialogsum", "tiny-gpt2", "full"), ("multi30k", "tiny-llama", "full"),
    ("tinyshakespeare", "tiny-gpt2", "full"), ("instruction_files", "tiny-qwen2", "full"),
] + [(task, "tiny-t5", "lora") for task in ("alpaca", "dialogsum", "multi30k")]  # fmt: skip


def gen(task: str) -> list[str]:
    return LM if task == "tinyshakespeare" else GEN


@pytest.mark.parametrize(("task", "model", "method"), RUNS)
def test_each_generation_task_trains_and_writes_its_answers(tmp_path, task, model, method):
    files = qa_files(tmp_path) if task == "instruction_files" else []
    run_dir = tmp_path / "run"
    run = train_tiny(run_dir, f"model={model}", f"peft={method}", *gen(task), *TASK_RUNS[task], *files)
    record = json.loads((run_dir / METRICS_FILE).read_text())
    assert record["status"] == "finished" and record["task"] == task
    assert set(record["eval"]) - {"split", "n"} == METRICS[task] | {"loss"}
    assert record["metric_info"]["perplexity"] == {"higher_is_better": False, "percent": False}
    # perplexity is exp of the mean loss per target token, which is what `loss` is
    assert record["eval"]["perplexity"] == pytest.approx(math.exp(record["eval"]["loss"]), rel=1e-5)
    assert record["train"]["tokens"] > record["train"]["samples"] >= 8  # examples (a packed row holds several)
    predictions = run_dir / "predictions_validation.jsonl"
    if task == "tinyshakespeare":
        assert not predictions.exists()
    else:
        rows = [json.loads(line) for line in predictions.read_text().splitlines()]
        assert len(rows) == 4 and all({"prompt", "reference", "prediction"} <= set(row) for row in rows)
        if task == "dialogsum":  # its test split, scored here, has 3 references a dialogue: all are kept
            assert all(len(row["references"]) == 3 and row["reference"] == row["references"][0] for row in rows)
    assert run.record.main_metric == TASKS.get(task, "task").main_metric


@pytest.mark.parametrize(("method", "model"), [
    ("adalora", "tiny-llama"), ("ia3", "tiny-gpt2"), ("loha", "tiny-qwen2"), ("adapter", "tiny-gpt2"),
    ("dora", "tiny-gpt2"), ("vera", "tiny-qwen2"), ("lokr", "tiny-llama"), ("bitfit", "tiny-gpt2"), ("prefix_tuning", "tiny-t5"),
])  # fmt: skip
def test_every_method_trains_on_a_decoder(tmp_path, method, model):
    run = train_tiny(tmp_path, f"model={model}", f"peft={method}", *GEN, *TASK_RUNS["multi30k"], "trainer.max_steps=2", "rank=2")
    assert run.record.train.steps == 2 and run.record.params.trainable > 0 and math.isfinite(run.record.eval.values["loss"])


def test_packing_trains_the_same_examples_in_fewer_rows(tmp_path):
    plain = train_tiny(tmp_path / "plain", "model=tiny-llama", "peft=lora", *GEN, *TASK_RUNS["multi30k"])
    packed = train_tiny(tmp_path / "packed", "model=tiny-llama", "peft=lora", *GEN, *TASK_RUNS["multi30k"], "task.packing=true")
    assert packed.record.train.samples == plain.record.train.samples == 32  # examples, not rows
    assert packed.record.train.tokens == plain.record.train.tokens
    assert packed.record.train.steps < plain.record.train.steps


@pytest.mark.parametrize("method", ["lora", "prefix_tuning", "prompt_tuning"])
def test_evaluate_reloads_and_regenerates_the_same_answers(tmp_path, method):
    # Prefix and prompt tuning generate through peft's own generate, which prepends the virtual tokens.
    from peftlab.evaluate import evaluate_run

    train_tiny(tmp_path, "model=tiny-llama", f"peft={method}", *GEN, *TASK_RUNS["multi30k"])
    result = evaluate_run(tmp_path, "validation", tmp_path / "again")
    assert result["matches_training"] is True and result["predictions"] == "predictions_validation.jsonl"
    assert (tmp_path / "again" / "predictions_validation.jsonl").read_text() == (tmp_path / "predictions_validation.jsonl").read_text()
    test = evaluate_run(tmp_path, "test", tmp_path / "again")
    assert test["n"] == 8 and test["matches_training"] is None and set(test["scores"]) == METRICS["multi30k"] | {"loss"}
    assert len((tmp_path / "again" / "predictions_test.jsonl").read_text().splitlines()) == 4


def test_zero_shot_scores_the_model_as_loaded(tmp_path):
    run = train_tiny(tmp_path, "model=tiny-llama", "peft=zero_shot", *GEN, *TASK_RUNS["multi30k"])
    assert run.record.train.steps == 0 and run.record.train.planned_steps == 0 and run.record.params.trainable == 0
    assert run.record.method.label == "zero_shot" and (tmp_path / "predictions_validation.jsonl").is_file()
    from peftlab.evaluate import evaluate_run

    assert evaluate_run(tmp_path, "validation")["matches_training"] is True  # nothing saved, the base reloaded


# -- metrics -------------------------------------------------------------------------------
def test_text_metrics_against_hand_computed_values():
    from peftlab.metrics.text import GenerationScores, bleu_chrf, rouge

    # ROUGE-1: 2 of 3 predicted unigrams match, both reference ones: P 2/3, R 1, F 0.8; best reference wins.
    assert rouge(["rouge1", "rougeL"])(["the cat sat"], [["the cat"]]) == pytest.approx({"rouge1": 0.8, "rougeL": 0.8})
    assert rouge(["rouge1"])(["the cat sat"], [["a dog", "the cat sat"]])["rouge1"] == pytest.approx(1.0)
    # BLEU: n-gram precisions 6/7, 5/6, 4/5, 3/4, no brevity penalty (the prediction is longer).
    scores = bleu_chrf(["the cat sat on the mat today"], [["the cat sat on the mat"]])
    assert scores["bleu"] == pytest.approx((6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25, abs=1e-6)
    assert bleu_chrf(["ein Hund läuft über die Wiese"], [["ein Hund läuft über die Wiese"]]) == pytest.approx({"bleu": 1.0, "chrf": 1.0})

    metric = GenerationScores([], decode=lambda ids: "", text_scores=lambda p, r: {})
    metric.update(torch.tensor(2.0), torch.tensor(3), torch.zeros(0, dtype=torch.long), [])
    metric.update(torch.tensor(1.0), torch.tensor(1), torch.zeros(0, dtype=torch.long), [])
    assert float(metric.compute()["perplexity"]) == pytest.approx(math.exp((3 * 2.0 + 1 * 1.0) / 4))


# -- bad input ---------------------------------------------------------------------------------
def test_a_template_naming_a_missing_field_names_the_fields_there_are(tmp_path):
    with pytest.raises(DataError, match=r"task.prompt names field 'question', which train example 1 lacks; its fields: instruction, input, output"):
        train_tiny(tmp_path, "model=tiny-llama", "task=instruction_files", *qa_files(tmp_path), "task.prompt='{question}'", "task.prompt_no_input=null")


def test_an_empty_target_is_refused_unless_dropped(tmp_path):
    records = [{"instruction": "a", "input": "", "output": "x"}, {"instruction": "b", "input": "", "output": "  "}]
    files = qa_files(tmp_path, records)
    with pytest.raises(DataError, match=r"train example 2 has an empty target .*task.drop_empty_targets=true"):
        train_tiny(tmp_path / "run", "model=tiny-llama", "task=instruction_files", *files)


def test_a_prompt_with_no_room_for_the_target_names_how_many_and_the_first(tmp_path):
    with pytest.raises(DataError, match=r"task alpaca: \d+ of 16 prompts leave no room for the target within task.max_length=16 \(the first, example \d+, is \d+ tokens\)"):
        train_tiny(tmp_path, "model=tiny-llama", *GEN, *TASK_RUNS["alpaca"], "task.max_length=16")


def test_a_gguf_model_without_the_gguf_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ConfigError, match=r"model.name_or_path=.*SmolLM2-135M-Instruct.Q4_1.gguf is a GGUF checkpoint.*run pip install gguf"):
        validate(compose("model=smollm2", "task=alpaca", f"data_dir={DATA}"))


def test_bad_generation_input_is_one_line(tmp_path):
    line = one_line_failure(tmp_path / "run", "model=tiny-llama", "task=instruction_files", *qa_files(tmp_path), "task.target='{answer}'")
    assert "task.target names field 'answer', which train example 1 lacks; its fields: instruction, input, output" in line
