"""Run folders: what a finished run leaves, what a crashed one does not, W&B offline, CPU DDP."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA, TINY, run_cli, train_tiny

from peftlab.module import PeftModule
from peftlab.outputs import CONFIG_FILE, METRICS_FILE, WEIGHTS_DIR, atomic_write
from peftlab.reload import load_run


def test_finished_run_folder_contents(tmp_path, sst2_available):
    run = train_tiny(tmp_path, "peft=adapter", "rank=4")
    assert {p.name for p in tmp_path.iterdir()} >= {CONFIG_FILE, METRICS_FILE, WEIGHTS_DIR, "logs"}
    config = (tmp_path / CONFIG_FILE).read_text()
    assert "bottleneck_dim: 4" in config and "${" not in config  # resolved
    metrics = run.metrics
    assert set(metrics) >= {"eval", "params", "train", "memory", "weights", "seed", "versions"}
    assert metrics["train"]["samples_per_s"] > 0 and metrics["memory"]["peak_mb"] > 0
    assert metrics["weights"]["bytes"] == (tmp_path / WEIGHTS_DIR / "model.safetensors").stat().st_size
    logged = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    assert logged[0].split(",")[:3] == ["epoch", "step", "train/loss"] or "val/accuracy" in logged[0]


def test_crashed_run_never_looks_finished(tmp_path, monkeypatch, sst2_available):
    original = PeftModule.training_step

    def crash_at_step_3(self, batch, batch_idx):
        if batch_idx == 3:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(PeftModule, "training_step", crash_at_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_tiny(tmp_path, "peft=lora")
    assert (tmp_path / CONFIG_FILE).is_file()
    assert not (tmp_path / METRICS_FILE).exists()
    assert not (tmp_path / WEIGHTS_DIR).exists()


def test_diverged_loss_fails_the_run(tmp_path, sst2_available):
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at step [1-7]"):
        train_tiny(tmp_path, "peft=full", "lr=1e30", "trainer.warmup_ratio=0")
    assert not (tmp_path / METRICS_FILE).exists()


def test_atomic_write_leaves_old_content_or_nothing(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write(target, "{}")

    with pytest.raises(TypeError):
        atomic_write(target, 12345)  # type: ignore[arg-type]  # fails while writing
    assert target.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_wandb_offline_run_is_recorded(tmp_path, sst2_available):
    train_tiny(tmp_path, "peft=linear_probe", "logger=wandb")
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_cpu_ddp_two_processes_match_one_process_scoring(tmp_path, sst2_available):
    run_dir = tmp_path / "ddp"
    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")]
    result = run_cli(*overrides, "trainer=ddp", "trainer.max_steps=-1", "peft=lora", f"hydra.run.dir={run_dir}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    assert metrics["train"]["devices"] == 2
    assert metrics["train"]["samples"] == 64  # 32 per process, none repeated
    assert metrics["eval"]["n"] == 32

    # Scoring the saved weights in one process gives the metrics the two processes reported.
    cfg, task, model = load_run(run_dir)
    from peftlab.data import TaskDataModule
    from peftlab.models import load_tokenizer

    data = TaskDataModule(task, load_tokenizer(cfg.model), 8, 8, 0, cfg.seed)
    data.setup()
    metric = task.metrics()
    with torch.no_grad():
        for batch in data.val_dataloader():
            metric.update(*task.metric_inputs(model(**batch).logits, batch["labels"]))
    single = {k: float(v) for k, v in metric.compute().items()}
    assert single["accuracy"] == metrics["eval"]["accuracy"]
    assert single["f1"] == metrics["eval"]["f1"]


def test_unreachable_hub_model_is_one_clear_line(tmp_path, sst2_available):
    result = run_cli(
        "model=hub", "model.name_or_path=someorg/not-a-model", "logger=csv", f"data_dir={DATA}",
        f"hydra.run.dir={tmp_path}", env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model.name_or_path='someorg/not-a-model' could not be loaded: not a local folder")
    assert not (tmp_path / METRICS_FILE).exists()
