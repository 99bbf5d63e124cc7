"""Scoring a run folder from its saved weights gives exactly what training recorded."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import DATA, compose, train_tiny

from peftlab.config import validate
from peftlab.evaluate import evaluate_run, main


# AdaLoRA: pruned ranks and a regulariser in the loss must survive the round trip; adapter: peftlab's
# own modules. full and lora are checked across processes in tests/test_pipeline.py.
METHODS = ["adalora", "adapter"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sst2_available):
    """One tiny run per method, with 4 evaluation batches of 8 (the run's own eval batch size)."""
    root = tmp_path_factory.mktemp("runs")
    return {m: (root / m, train_tiny(root / m, f"peft={m}", "rank=4", "seed=3", "trainer.eval_batch_size=8")) for m in METHODS}


def test_reloaded_weights_score_exactly_as_training_did(trained):
    for method, (run_dir, run) in trained.items():
        result = evaluate_run(run_dir, "validation")
        assert result["scores"] == {k: run.metrics["eval"][k] for k in ("accuracy", "f1", "loss")}, method
        assert result["matches_training"] is True and result["n"] == 32 and result["batch_size"] == 8


def test_cli_writes_eval_file_for_any_split(trained, tmp_path):
    run_dir = trained["adalora"][0]
    main([str(run_dir), "split=train", f"out={tmp_path / 'evals'}"])
    record = json.loads((tmp_path / "evals" / "eval_train.json").read_text())
    assert record["split"] == "train" and record["n"] == 64 and record["seed"] == 3  # the seeded 64-sentence sample
    assert record["training_scores"] is None and record["matches_training"] is None  # training scored validation only
    assert record["data"] == {
        "file": str(DATA / "glue" / "SST-2" / "train.tsv"),
        "md5": hashlib.md5((DATA / "glue" / "SST-2" / "train.tsv").read_bytes()).hexdigest(),
    }
    assert set(record["scores"]) == {"accuracy", "f1", "loss"}


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed", "64-true"])
def test_evaluation_casts_as_training_did(tmp_path, precision, sst2_available):
    """Scoring outside the Trainer goes through the run's own precision plugin: still bit-identical."""
    train_tiny(tmp_path, "peft=lora", f"trainer.precision={precision}")
    result = evaluate_run(tmp_path, "validation")
    assert result["matches_training"] is True, (result["scores"], result["training_scores"])


def test_pissa_reloads_from_its_converted_adapter_and_evaluate_says_why_it_may_differ(tmp_path, sst2_available):
    """PiSSA's weights are saved as a rank-2r LoRA of the original base (portable to plain peft), so
    the reload sums in another order than training's residual base: evaluate names that cause
    instead of calling the scores DIFFERENT (which it keeps for differences that are bugs)."""
    from peftlab.evaluate import comparison

    train_tiny(tmp_path, "peft=pissa", "task=stsb", "trainer.max_steps=2", "rank=2")
    result = evaluate_run(tmp_path, "validation")
    assert result["reload_note"].startswith("init=pissa is saved as a LoRA of the original base (rank 2r")
    assert result["matches_training"] is (result["largest_difference"] == 0)  # 1.7e-04 on Pearson here in bf16
    assert result["largest_difference"] < 0.01
    assert comparison({**result, "matches_training": False, "largest_difference": 1.7e-4}) == (
        "not bit-identical to training's, largest relative difference 1.7e-04: " + result["reload_note"])
    assert comparison({**result, "matches_training": False, "reload_note": None, "largest_difference": 0.01}) == (
        "DIFFERENT from training's, largest relative difference 1.0e-02")
    lora = tmp_path / "lora"
    train_tiny(lora, "peft=lora", "task=stsb", "trainer.max_steps=2", "rank=2")
    assert evaluate_run(lora, "validation")["reload_note"] is None


def test_an_undefined_score_matches_an_undefined_one(tmp_path, sst2_available):
    """Pearson over one example is undefined: null in both files, and the same score."""
    train_tiny(tmp_path, "task=stsb", "task.max_eval_samples=1", "trainer.latency_examples=1", "trainer.max_steps=2")
    result = evaluate_run(tmp_path, "validation")
    assert result["matches_training"] is True and result["largest_difference"] == 0.0
    main([str(tmp_path)])
    written = json.loads((tmp_path / "eval_validation.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert written["scores"]["pearson"] is None and written["training_scores"]["pearson"] is None


def test_metric_states_stay_fp32_when_lightning_casts_the_module_to_bf16(tmp_path):
    """bf16-true casts the LightningModule with .to(dtype=...), which torchmetrics passed on to its
    states: training's loss was summed in bf16 (10.8125 where evaluate gave 10.7946 on this run)."""
    import torch

    from peftlab.scoring import Scorer

    train_tiny(tmp_path, "model=tiny-llama", "task=multi30k", "trainer.precision=bf16-true", "trainer.max_steps=2", "rank=2",
                     "task.max_train_samples=16", "task.max_eval_samples=4", "task.generate_samples=2", "task.max_new_tokens=3",
                     "trainer.eval_batch_size=4")  # fmt: skip
    result = evaluate_run(tmp_path, "validation")
    assert result["matches_training"] is True, (result["scores"], result["training_scores"])
    from peftlab.methods import METHODS
    from peftlab.tasks import TASKS

    cfg = validate(compose("model=tiny-llama", "task=multi30k", f"data_dir={DATA}"))
    scorer = Scorer(TASKS.get("multi30k", "task")(cfg.task, seed=0), METHODS.get("lora", "peft")(cfg.peft)).to(dtype=torch.bfloat16)
    assert scorer.loss.mean_value.dtype == torch.float32 and scorer.loss.weight.dtype == torch.float32
