"""SemEval-2010 Task 8: the real splits, the one-line errors, and the official directed macro-F1
against a hand-computed confusion matrix and against the task's own Perl scorer."""

from __future__ import annotations

import random
import re
import shutil
import subprocess

import pytest
import torch
from conftest import DATA, compose, train_tiny

from peftlab.config import validate
from peftlab.errors import DataError
from peftlab.evaluate import evaluate_run
from peftlab.metrics.relation import DirectedMacroF1
from peftlab.tasks import TASKS
from peftlab.tasks.relation_extraction import LABELS, read_blocks

SEMEVAL = DATA / "semeval2010_task8"


def task_for(*overrides: str):
    cfg = validate(compose("task=semeval2010", f"data_dir={DATA}", *overrides))
    return TASKS.get("semeval2010", "task")(cfg.task, seed=0)


def test_splits_are_the_release_with_a_fixed_validation_tail(sst2_available):
    task = task_for()
    train, validation, test = (task.examples(s) for s in ("train", "validation", "test"))
    assert (len(train), len(validation), len(test)) == (7200, 800, 2717)
    assert "<e1>configuration</e1>" in train[0]["texts"][0] and train[0]["label"] == "Component-Whole(e2,e1)"
    assert test[0] == {"texts": ("The most common <e1>audits</e1> were about <e2>waste</e2> and recycling.",), "label": "Message-Topic(e1,e2)"}
    assert len(LABELS) == 19 and {r["label"] for r in train} == set(LABELS)


def test_a_sentence_without_both_markers_is_one_line_naming_file_line_and_id(tmp_path):
    path = tmp_path / "TRAIN_FILE.TXT"
    path.write_text('1\t"The <e1>child</e1> was wrapped."\r\nOther\r\nComment:\r\n\r\n')
    with pytest.raises(DataError, match=r"TRAIN_FILE.TXT line 1 \(sentence 1\): no <e2> marker; a relation sentence marks both entities"):
        read_blocks(path)


def test_a_max_length_that_cuts_an_entity_marker_is_refused_with_the_length_that_keeps_them(sst2_available):
    # Through its last marker, the longest of these 16 sentences takes 46 MiniLM tokens with [CLS] and [SEP].
    from peftlab.models import load_tokenizer

    cfg = validate(compose("task=semeval2010", f"data_dir={DATA}", "task.max_length=30", "task.max_train_samples=16"))
    task = TASKS.get("semeval2010", "task")(cfg.task, seed=0)
    tokenizer = load_tokenizer(cfg.model)
    train = task.examples("train")
    with pytest.raises(DataError, match=r"^task semeval2010: at task.max_length=30, 13 of 16 sentences would be cut before their last entity marker "
                                        r"\(the first: 'In the years since .*; allowed: task.max_length >= 46, what these sentences need"):
        task.encode(train, tokenizer)
    cfg.task.max_length = 46
    assert max(len(e["input_ids"]) for e in task.encode(train, tokenizer)) <= 46
    assert task_for().encode(task_for().examples("validation"), tokenizer)  # the default 128 keeps every marker


def score(gold: list[str], pred: list[str]) -> float:
    metric = DirectedMacroF1(LABELS)
    metric.update(torch.tensor([LABELS.index(p) for p in pred]), torch.tensor([LABELS.index(g) for g in gold]))
    return float(metric.compute())


def test_official_score_on_a_hand_computed_confusion_matrix():
    ce, ec, cw = "Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Component-Whole(e1,e2)"
    gold = [ce, ce, ec, cw, "Other", "Other"]
    pred = [ce, ec, ec, "Other", cw, "Other"]
    # Cause-Effect: correct 2 (one ce, one ec), proposed 3, gold 3 -> P = R = F1 = 2/3.
    # Component-Whole: correct 0, proposed 1, gold 1 -> F1 = 0. Other is not averaged.
    assert score(gold, pred) == pytest.approx((2 / 3 + 0) / 2)
    # A wrong direction is wrong: all Cause-Effect predicted as (e1,e2) halves its F1 here.
    assert score([ce, ec], [ce, ce]) == pytest.approx(0.5)


@pytest.mark.skipif(shutil.which("perl") is None, reason="the official scorer is a Perl script")
def test_agrees_with_the_official_perl_scorer(tmp_path, sst2_available):
    gold = [row["label"] for row in read_blocks(SEMEVAL / "TEST_FILE_FULL.TXT")]
    rng = random.Random(0)
    pred = [g if rng.random() < 0.6 else rng.choice(LABELS) for g in gold]  # 60% right, the rest anything
    (tmp_path / "key.txt").write_text("".join(f"{i}\t{g}\n" for i, g in enumerate(gold, start=8001)))
    (tmp_path / "answer.txt").write_text("".join(f"{i}\t{p}\n" for i, p in enumerate(pred, start=8001)))
    out = subprocess.run(["perl", str(SEMEVAL / "semeval2010_task8_scorer-v1.2.pl"), str(tmp_path / "answer.txt"), str(tmp_path / "key.txt")],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    official = float(re.search(r"macro-averaged F1 = ([\d.]+)%", out).group(1))
    assert 100 * score(gold, pred) == pytest.approx(official, abs=0.005)  # the scorer prints 2 decimals


def test_tiny_runs_score_validation_as_training_did_and_score_test(tmp_path, sst2_available):
    run = train_tiny(tmp_path, "task=semeval2010", "peft=lora", "task.max_train_samples=64", "task.max_eval_samples=32")
    assert run.metrics["main_metric"] == "f1" and set(run.metrics["eval"]) == {"split", "n", "f1", "accuracy", "loss"}
    assert evaluate_run(tmp_path, "validation")["matches_training"] is True
    test = evaluate_run(tmp_path, "test")
    assert test["n"] == 32 and test["data"]["file"].endswith("TEST_FILE_FULL.TXT")
