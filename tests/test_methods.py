"""Each method trains for real on a tiny model, reports exact parameter counts, and reloads exactly."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import train_tiny

from peftlab.outputs import METRICS_FILE, WEIGHTS_DIR
from peftlab.reload import load_run

# tiny-bert: L layers of width d, feed-forward width i, a 2-class head; BERT's vocabulary.
L, D, I, C, VOCAB, POS = 2, 32, 64, 2, 30522, 128
HEAD = D * C + C


def base_total() -> int:
    embeddings = VOCAB * D + POS * D + 2 * D + 2 * D  # word, position, token type, LayerNorm
    attention = 4 * (D * D + D) + 2 * D  # q, k, v, output + LayerNorm
    ffn = (D * I + I) + (I * D + D) + 2 * D
    pooler = D * D + D
    return embeddings + L * (attention + ffn) + pooler + HEAD


def lora_all_linear(r: int) -> int:  # q, k, v, attention output: d->d; intermediate: d->i; output: i->d
    return L * (4 * r * (D + D) + r * (D + I) + r * (I + D))


CASES = {
    # method overrides: (trainable, added to the base)
    "full": ([], base_total(), 0),
    "linear_probe": ([], HEAD, 0),
    "lora": (["rank=4"], lora_all_linear(4) + HEAD, lora_all_linear(4)),
    "lora-qv": (["rank=4", "peft.target_modules=[query,value]"], 2 * L * 2 * D * 4 + HEAD, 2 * L * 2 * D * 4),
    "adapter": (["rank=4"], 2 * L * (2 * D * 4 + 4 + D) + HEAD, 2 * L * (2 * D * 4 + 4 + D)),
    "adapter-pfeiffer": (["rank=4", "peft.variant=pfeiffer"], L * (2 * D * 4 + 4 + D) + HEAD, L * (2 * D * 4 + 4 + D)),
    "ia3": ([], L * 3 * D + HEAD, L * 3 * D),
    "loha": (["rank=2"], L * 2 * 2 * 2 * (D + D) + HEAD, L * 2 * 2 * 2 * (D + D)),
    # LoRA's variants: the same factors (DoRA adds a magnitude per output feature of each adapted layer).
    "dora": (["rank=4"], lora_all_linear(4) + L * (5 * D + I) + HEAD, lora_all_linear(4) + L * (5 * D + I)),
    "rslora": (["rank=4"], lora_all_linear(4) + HEAD, lora_all_linear(4)),
    "pissa": (["rank=4"], lora_all_linear(4) + HEAD, lora_all_linear(4)),
    "loraplus": (["rank=4"], lora_all_linear(4) + HEAD, lora_all_linear(4)),
    # VeRA: per adapted layer (q, v) a vector of its r and one of its output width; the shared
    # random projections are buffers, not parameters.
    "vera": (["peft.options.r=48"], L * 2 * (48 + D) + HEAD, L * 2 * (48 + D)),
    # LoKr, rank 2, on q and v (32 x 32): each side 32 = 4 x 8, so a full 4 x 4 factor and a rank-2
    # 8 x 8 one (2 < 8 / 2): 16 + 2 * (8 + 8) per layer.
    "lokr": (["rank=2"], L * 2 * (16 + 2 * (8 + 8)) + HEAD, L * 2 * (16 + 2 * (8 + 8))),
    # BitFit: every bias (embedding LayerNorm, per layer q k v output LayerNorm intermediate output
    # LayerNorm, the pooler) and the head; nothing added.
    "bitfit": ([], D + L * (7 * D + I) + D + HEAD, 0),
    # Prompt tuning: 20 virtual token embeddings, which take 20 of the 128 positions.
    "prompt_tuning": (["task.max_length=64"], 20 * D + HEAD, 20 * D),
}


def _method(case: str) -> str:
    return case.split("-")[0] if case.startswith(("lora-", "adapter-")) else case


@pytest.mark.parametrize("case", sorted(CASES))
def test_tiny_training_counts_saves_and_reloads(tmp_path, sst2_available, case):
    overrides, trainable, added = CASES[case]
    run = train_tiny(tmp_path, f"peft={_method(case)}", *overrides)

    metrics = json.loads((tmp_path / METRICS_FILE).read_text())
    assert metrics["status"] == "finished"
    assert metrics["params"]["trainable"] == trainable
    assert metrics["params"]["total"] == base_total() + added
    assert metrics["params"]["trainable_percent"] == pytest.approx(100 * trainable / (base_total() + added))
    assert metrics["eval"]["n"] == 32 and 0 <= metrics["eval"]["accuracy"] <= 1
    assert metrics["train"]["samples"] == 64 and metrics["train"]["steps"] == 8

    # Only trainable weights are saved: never the frozen base (except for full fine-tuning).
    saved = sum(p.stat().st_size for p in (tmp_path / WEIGHTS_DIR).glob("*.safetensors"))
    assert saved < 4 * trainable + 20_000 or case == "full"
    assert metrics["weights"]["bytes"] >= saved

    # Reloaded from the folder (base + saved weights), the model gives the same logits.
    _, _, reloaded = load_run(tmp_path)
    batch = {"input_ids": torch.tensor([[101, 2023, 3185, 2001, 2307, 102]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    run.model.eval()
    with torch.no_grad():
        trained, again = run.model(**batch).logits, reloaded(**batch).logits
    if case == "pissa":  # saved as a LoRA of the original weights: W + B'A' - B0A0 vs W_res + B'A', equal up to rounding
        torch.testing.assert_close(again, trained, rtol=0, atol=1e-5)
    else:
        assert torch.equal(trained, again)


def test_peft_methods_load_with_peft_itself(tmp_path, sst2_available):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, BertConfig

    run = train_tiny(tmp_path, "peft=lora", "rank=4")
    assert (tmp_path / WEIGHTS_DIR / "adapter_config.json").is_file()
    assert (tmp_path / WEIGHTS_DIR / "adapter_model.safetensors").is_file()
    torch.manual_seed(0)  # the tiny base is built with seed 0
    base = AutoModelForSequenceClassification.from_config(
        BertConfig(hidden_size=D, num_hidden_layers=L, num_attention_heads=2, intermediate_size=I, max_position_embeddings=POS, num_labels=C)
    )
    model = PeftModel.from_pretrained(base, str(tmp_path / WEIGHTS_DIR)).eval()
    batch = {"input_ids": torch.tensor([[101, 7592, 102]])}
    run.model.eval()
    with torch.no_grad():
        assert torch.equal(run.model(**batch).logits, model(**batch).logits)


def test_same_seed_same_metrics_and_weights(tmp_path, sst2_available):
    first = train_tiny(tmp_path / "a", "peft=lora", "seed=3")
    second = train_tiny(tmp_path / "b", "peft=lora", "seed=3")
    other = train_tiny(tmp_path / "c", "peft=lora", "seed=4")
    assert first.metrics["eval"] == second.metrics["eval"]
    a, b, c = (dict(r.model.named_parameters()) for r in (first, second, other))
    trained = [n for n, p in a.items() if p.requires_grad]
    assert all(torch.equal(a[n], b[n]) for n in trained)
    assert not all(torch.equal(a[n], c[n]) for n in trained)


def test_adalora_budget_shrinks_to_the_target(tmp_path, sst2_available):
    # 16 steps: 2 at the full budget, budgeting, the last 4 at the target budget.
    run = train_tiny(
        tmp_path, "peft=adalora", "rank=2", "peft.init_r=6", "peft.tinit=2", "peft.tfinal=4", "peft.deltaT=1",
        "task.max_train_samples=128", "peft.target_modules=[query,value]",
    )
    assert run.metrics["train"]["steps"] == run.metrics["train"]["planned_steps"] == 16
    matrices = 2 * L
    kept = sum(int((p != 0).sum()) for n, p in run.model.named_parameters() if "lora_E" in n)
    assert kept == 2 * matrices  # target_r per matrix on average, down from init_r
    saved = json.loads((tmp_path / WEIGHTS_DIR / "adapter_config.json").read_text())
    assert sum(saved["rank_pattern"][k].count(True) for k in saved["rank_pattern"]) == 2 * matrices
    assert run.metrics["params"]["trainable"] == matrices * 6 * (D + D + 1) + HEAD


def test_peft_gets_the_task_type_of_the_head(tmp_path, sst2_available):
    from peft import AutoPeftModelForSequenceClassification

    run = train_tiny(tmp_path, "peft=lora", "rank=4")
    assert type(run.model).__name__ == "PeftModelForSequenceClassification"
    saved = json.loads((tmp_path / WEIGHTS_DIR / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS"
    _, _, reloaded = load_run(tmp_path)
    assert type(reloaded).__name__ == "PeftModelForSequenceClassification"
    assert AutoPeftModelForSequenceClassification._target_peft_class is type(reloaded)  # what reloads it for users


def test_adalora_regulariser_is_in_the_training_loss(tmp_path, sst2_available):
    """Through peft's task wrapper the tuner's forward runs, which adds AdaLoRA's orthogonal
    regulariser to the loss; a plain PeftModel would skip it."""
    run = train_tiny(tmp_path, "peft=adalora", "rank=2", "peft.orth_reg_weight=0.5")
    model = run.model.train()
    batch = {"input_ids": torch.tensor([[101, 7592, 102]]), "labels": torch.tensor([1])}
    torch.manual_seed(0)
    with_regulariser = model(**batch).loss
    torch.manual_seed(0)
    plain = model.get_base_model()(**batch).loss  # what a plain PeftModel computes
    assert float(with_regulariser - plain) > 0


def test_peft_question_answering_wrapper_drops_token_type_ids():
    """Why QA keeps the plain PeftModel (methods/peft_library.py): peft's QA wrapper does not pass
    token_type_ids on. When this fails, peft has fixed it and QA can take QUESTION_ANS."""
    import copy

    import peft
    from transformers import AutoModelForQuestionAnswering, BertConfig

    from peftlab.methods.peft_library import task_type

    torch.manual_seed(0)
    base = AutoModelForQuestionAnswering.from_config(BertConfig(hidden_size=D, num_hidden_layers=L, num_attention_heads=2, intermediate_size=I, vocab_size=100))
    assert task_type(base) is None
    ids = torch.tensor([[1, 5, 6, 2, 7, 8, 2]])
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])

    def start_logits(task):
        model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, target_modules=["query"], task_type=task)).eval()
        with torch.no_grad():
            return model(input_ids=ids, token_type_ids=segments).start_logits, model(input_ids=ids).start_logits

    with_segments, without = start_logits("QUESTION_ANS")
    assert torch.equal(with_segments, without)  # the wrapper ignored the segments
    with_segments, without = start_logits(None)
    assert not torch.equal(with_segments, without)  # the plain PeftModel passes them on
