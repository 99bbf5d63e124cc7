"""Scoring a run folder from its saved weights gives exactly what training recorded."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import DATA, train_tiny

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
