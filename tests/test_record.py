"""The run record (metrics.json as a dataclass): what ran, read back everywhere, old records upgraded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import CONF, train_tiny

from peftlab.errors import DataError
from peftlab.nn.dropout import mask_generator
from peftlab.outputs import METRICS_FILE
from peftlab.record import FORMAT, MethodRecord, ModelIdentity, Params, RunRecord, Scores, TrainStats, Memory, Weights
from peftlab.tasks.base import LOSS, MetricInfo


LORA = {"r": 8, "alpha": 16, "target_modules": ["query", "value"]}


def record(method: str = "lora", label: str = "lora-r8", seed: int = 1, accuracy: float = 0.8, lr: float = 1e-3, **settings) -> RunRecord:
    """A record of a hand-made run; `settings` change LoRA's (a method other than lora has none)."""
    return RunRecord(
        task="sst2", model=ModelIdentity("minilm", "bert", "/models/minilm"),
        method=MethodRecord(method, label, {**LORA, **settings} if method == "lora" else {}),
        seed=seed, lr=lr, main_metric="accuracy",
        metric_info={"accuracy": MetricInfo("accuracy"), "loss": LOSS},
        eval=Scores("validation", 872, {"accuracy": accuracy, "loss": 0.4}),
        params=Params(1000, 23_000_000, 100 * 1000 / 23_000_000), train=TrainStats(10.0, 50.0, 80, 80, 2560, 1, "32-true", dropout_masks="philox4x32-10"),
        memory=Memory(900.0, "cpu_peak_rss"), weights=Weights(4000),
    )  # fmt: skip


def test_training_records_what_ran(tmp_path, sst2_available):
    # rank=8 is the shortcut; peft.r=4 is what LoRA ran with.
    run = train_tiny(tmp_path / "lora", "peft=lora", "rank=8", "peft.r=4", "peft.target_modules=[query,value]")
    saved = RunRecord.read(tmp_path / "lora")
    assert saved == run.record and saved.format == FORMAT
    assert saved.method == MethodRecord("lora", "lora-r4", {
        "r": 4, "alpha": 16.0, "dropout": 0.1, "use_dora": False, "use_rslora": False, "init": "default",
        "loraplus_lr_ratio": None, "quantize": None, "target_modules": ["query", "value"],
    })  # fmt: skip
    assert saved.model == ModelIdentity("tiny-bert", "bert", "random BertConfig")
    assert saved.train.dropout_masks == mask_generator()  # philox4x32-10 wherever peftlab's kernel builds
    data = json.loads((tmp_path / "lora" / METRICS_FILE).read_text())
    assert "rank" not in data and "alpha" not in data  # the shortcuts are not what ran
    assert data["eval"]["split"] == "validation" and data["eval"]["n"] == 32 and "accuracy" in data["eval"]

    full = train_tiny(tmp_path / "full", "peft=full").record
    assert full.method == MethodRecord("full", "full", {})  # no rank it does not have


def test_format_1_records_still_load(tmp_path):
    old = {
        "status": "finished", "model": "minilm", "method": "lora", "task": "sst2", "seed": 3, "rank": 8, "alpha": 16.0,
        "lr": 0.001, "peft": {"r": 8, "alpha": 16.0, "target_modules": ["query"]}, "architecture": "bert",
        "main_metric": "accuracy", "eval": {"split": "validation", "n": 872, "accuracy": 0.86, "loss": 0.3},
        "params": {"trainable": 10, "total": 100, "trainable_percent": 10.0}, "train": {"time_s": 1.0, "samples_per_s": 2.0},
        "memory": {"peak_mb": 5.0}, "weights": {"bytes": 7},
    }  # fmt: skip
    (tmp_path / METRICS_FILE).write_text(json.dumps(old))
    loaded = RunRecord.read(tmp_path)
    assert loaded.method == MethodRecord("lora", "lora-r8", {"r": 8, "alpha": 16.0, "target_modules": ["query"]})
    assert loaded.model == ModelIdentity("minilm", "bert", "unknown")
    assert loaded.main_score == 0.86 and loaded.eval.n == 872 and loaded.weights.bytes == 7
    assert loaded.info("accuracy").higher_is_better and not loaded.info("loss").higher_is_better
    # Records from before `peft` was recorded keep the shortcuts they had.
    del old["peft"]
    (tmp_path / METRICS_FILE).write_text(json.dumps(old))
    assert RunRecord.read(tmp_path).method == MethodRecord("lora", "lora", {"rank": 8, "alpha": 16.0})


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(format=3), "its format is 3; this peftlab reads formats 1 and 2 (a newer peftlab wrote it?)"),
        (lambda d: d["params"].update(trainable="10"), "params.trainable is '10', not an int"),
        (lambda d: d["model"].pop("model_type"), "it has no model.model_type"),
        (lambda d: d["eval"].update(accuracy="0.8"), "eval.accuracy is '0.8', not a number"),  # null is allowed: an undefined score
        (lambda d: d["eval"].pop("accuracy"), "eval.accuracy (its main metric) is missing"),
        (lambda d: d.update(seed=True), "seed is True, not an int"),
        (lambda d: d["metric_info"].update(accuracy={"higher_is_better": 1}), "metric_info.accuracy is {'higher_is_better': 1}, not"),
    ],
)
def test_damaged_records_are_one_line(tmp_path, change, expected):
    data = record().to_json()
    change(data)
    (tmp_path / METRICS_FILE).write_text(json.dumps(data))
    with pytest.raises(DataError) as caught:
        RunRecord.read(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / METRICS_FILE} is not a run record: {expected}") and "\n" not in message


def test_written_record_reads_back_equal(tmp_path):
    written = record(dropout=0.1)
    written.write(tmp_path)
    assert RunRecord.read(tmp_path) == written
    assert written.summary_line(Path("runs/x")) == (
        "finished lora-r8 on sst2 (minilm, seed 1): validation accuracy 0.8000 (n=872) | trainable 1,000 of "
        "23,000,000 (0.004%) | trained in 10.0 s | runs/x"
    )


def test_an_undefined_score_is_null_in_the_file_and_undefined_in_the_line(tmp_path):
    # Pearson over one example is NaN; Python would write NaN, which no strict JSON reader takes.
    written = record(accuracy=float("nan"))
    written.write(tmp_path)
    text = (tmp_path / METRICS_FILE).read_text()
    assert '"accuracy": null' in text and "NaN" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))["eval"]["accuracy"] is None
    read = RunRecord.read(tmp_path)
    assert math.isnan(read.main_score) and read.eval.values["loss"] == 0.4
    assert "validation accuracy undefined (n=872)" in read.summary_line(Path("runs/x"))


def folder_of(*overrides: str) -> str:
    """The run folder train.py would use for these overrides (Hydra's own resolution)."""
    from hydra.core.hydra_config import HydraConfig

    from peftlab.cli import compose_config

    cfg = compose_config(CONF, list(overrides), with_hydra=True)
    HydraConfig.instance().set_config(cfg)
    return cfg.hydra.run.dir.rsplit("/", 1)[0]  # without <time>-<id>


@pytest.mark.parametrize(
    ("overrides", "folder"),
    [
        (["peft=lora", "rank=8", "peft.r=16"], "runs/sst2/minilm/lora-r16-s42"),
        (["peft=full", "rank=4"], "runs/sst2/minilm/full-s42"),
        (["peft=linear_probe", "seed=3"], "runs/sst2/minilm/linear_probe-s3"),
        (["peft=adalora", "rank=4"], "runs/sst2/minilm/adalora-r4-s42"),
        (["peft=adapter", "rank=16"], "runs/sst2/minilm/adapter-houlsby-b16-s42"),
        (["peft=adapter", "peft.reduction_factor=16"], "runs/sst2/minilm/adapter-houlsby-rf16-s42"),
        (["peft=loha", "rank=2"], "runs/sst2/minilm/loha-r2-s42"),
        (["peft=ia3"], "runs/sst2/minilm/ia3-s42"),
        (["task=cola", "model.name_or_path=/somewhere/roberta-base/"], "runs/cola/roberta-base/lora-r8-s42"),
        (["model=hub", "model.name_or_path=org/deberta-v3-small"], "runs/sst2/deberta-v3-small/lora-r8-s42"),
    ],
)
def test_run_folders_are_labelled_from_what_runs(overrides, folder):
    assert folder_of(*overrides) == folder


def test_report_rows_are_split_by_effective_settings(tmp_path):
    from peftlab.report.runs import read_run
    from peftlab.report.table import build_table

    runs = []
    for i, rec in enumerate([
        record(seed=1), record(seed=2),  # one row: they differ only in seed
        record(seed=1, alpha=32), record(seed=2, alpha=32),  # LoRA at another alpha: its own row
        record(label="lora-r16", seed=1, r=16),  # another rank: another label
        record(method="full", label="full", seed=1, accuracy=0.9),
    ]):
        folder = tmp_path / str(i)
        folder.mkdir()
        rec.write(folder)
        runs.append(read_run(folder, "validation"))
    table = build_table(runs, [], "validation", "full", 0.05)
    rows = {row.label: [run.seed for run in row.runs] for row in table.rows}
    assert rows == {"full": [1], "lora-r8 (alpha=16)": [1, 2], "lora-r8 (alpha=32)": [1, 2], "lora-r16": [1]}
