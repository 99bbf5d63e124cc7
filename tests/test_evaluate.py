"""Scoring a run folder from its saved weights gives exactly what training recorded."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from conftest import DATA, ROOT, train_tiny

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


def test_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "unfinished").mkdir()
    for args, message in [
        ((), "error: no run folder given; usage: python -m peftlab.evaluate RUN_FOLDER [split=validation] [out=DIR]"),
        (("x", "split=test"), "error: split=test is not a split; allowed: train, validation"),
        (("x", "--out", "y"), "error: --out: unknown argument; allowed: split=, out= "
                              "(usage: python -m peftlab.evaluate RUN_FOLDER [split=validation] [out=DIR])"),
        ((str(tmp_path / "unfinished"),), f"error: {tmp_path / 'unfinished'} is not a finished run (no metrics.json)"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(list(args))
        assert exit_.value.code == 2, args
        assert capsys.readouterr().err.strip() == message
    # and through the real command line, without a traceback
    done = subprocess.run([sys.executable, "-m", "peftlab.evaluate", "x", "split=test"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr == "error: split=test is not a split; allowed: train, validation\n"
