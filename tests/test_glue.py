"""GLUE CoLA, MRPC, RTE and STS-B: the real splits, metrics against hand-computed values, tiny runs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DATA, compose, train_tiny

from peftlab.config import validate
from peftlab.errors import DataError
from peftlab.evaluate import evaluate_run
from peftlab.tasks import TASKS

SIZES = {"cola": (8551, 1043), "mrpc": (3668, 408), "rte": (2490, 277), "stsb": (5749, 1500)}  # GLUE's official counts


def task_for(name: str, *overrides: str):
    cfg = validate(compose(f"task={name}", f"data_dir={DATA}", *overrides))
    return TASKS.get(cfg.task.task, "task")(cfg.task, seed=cfg.seed)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_real_splits_have_the_official_sizes_and_no_test_labels(name, sst2_available):
    task = task_for(name)
    assert (len(task.examples("train")), len(task.examples("validation"))) == SIZES[name]
    with pytest.raises(DataError, match=f"task {name} has no labelled test split \\(GLUE's test labels are not public\\)"):
        task.examples("test")


def test_rows_are_read_from_the_right_columns(sst2_available):
    assert task_for("cola").examples("train")[0] == {
        "texts": ("Our friends won't buy this analysis, let alone the next one we propose.",), "label": "1"}
    rte = task_for("rte").examples("train")[0]
    assert rte == {"texts": ("No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq."),
                   "label": "not_entailment"}
    assert task_for("stsb").examples("train")[0] == {"texts": ("A plane is taking off.", "An air plane is taking off."), "label": "5.000"}
    assert len(task_for("mrpc").examples("validation")[0]["texts"]) == 2


def scores(name: str, preds, target) -> dict[str, float]:
    metrics = task_for(name).metrics()
    metrics.update(torch.tensor(preds), torch.tensor(target))
    return {k: float(v) for k, v in metrics.compute().items()}


def test_cola_matthews_correlation_by_hand(sst2_available):
    # TP=2, TN=1, FP=1, FN=0: MCC = (2*1 - 1*0) / sqrt((2+1)(2+0)(1+1)(1+0)) = 2 / sqrt(12)
    got = scores("cola", [1, 1, 1, 0], [1, 1, 0, 0])
    assert got["mcc"] == pytest.approx(2 / math.sqrt(12), abs=1e-6)
    assert got["accuracy"] == pytest.approx(0.75)


def test_mrpc_f1_of_the_paraphrase_class_by_hand(sst2_available):
    # TP=2, FP=1, FN=1: precision 2/3, recall 2/3, F1 2/3; accuracy 3/5
    got = scores("mrpc", [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert got == pytest.approx({"accuracy": 0.6, "f1": 2 / 3})


def test_stsb_pearson_and_spearman_by_hand(sst2_available):
    preds, target = [1.0, 2.0, 3.0, 5.0], [1.0, 3.0, 2.0, 4.0]
    mp, mt = sum(preds) / 4, sum(target) / 4
    cov = sum((p - mp) * (t - mt) for p, t in zip(preds, target))
    pearson = cov / math.sqrt(sum((p - mp) ** 2 for p in preds) * sum((t - mt) ** 2 for t in target))
    # ranks (1, 2, 3, 4) and (1, 3, 2, 4): Spearman = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    got = scores("stsb", preds, target)
    assert got["pearson"] == pytest.approx(pearson, abs=1e-6)
    assert got["spearman"] == pytest.approx(0.8, abs=1e-6)


@pytest.mark.parametrize("name,method", [("cola", "lora"), ("mrpc", "full"), ("rte", "lora"), ("stsb", "lora"), ("stsb", "full")])
def test_tiny_runs_train_and_score_with_the_task_metrics(tmp_path, name, method, sst2_available):
    # tiny-bert has 128 positions (RTE's YAML asks for 256, which MiniLM has)
    run = train_tiny(tmp_path, f"task={name}", f"peft={method}", "task.max_train_samples=32", "task.max_eval_samples=16", "task.max_length=128")
    task = TASKS.get(name, "task")
    assert run.metrics["main_metric"] == task.main_metric
    assert set(run.metrics["eval"]) == {"split", "n", "loss", *task.metric_names()}
    assert run.metrics["metric_info"][task.main_metric] == {"higher_is_better": True, "percent": True}
    assert run.metrics["metric_info"]["loss"] == {"higher_is_better": False, "percent": False}
    if name == "stsb":  # one regression output and a mean-squared-error loss
        assert run.model.config.num_labels == 1 and run.model.config.problem_type == "regression"
        assert evaluate_run(tmp_path, "validation")["matches_training"] is True
