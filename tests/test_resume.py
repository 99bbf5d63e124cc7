"""Resumable runs: trainable-only checkpoints every N steps, and a run killed with SIGKILL then
resumed that ends exactly as an uninterrupted one (metrics and weights, bit for bit, on CPU)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import CONF, ROOT, TINY, compose, run_cli, train_tiny

# 96 optimizer steps of a tiny LoRA (dropout 0.1, so the RNG states matter), a checkpoint every 4.
LONG = ["peft=lora", "trainer.max_epochs=12", "trainer.checkpoint_every=4", "seed=7"]


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {f.name: load_file(str(f)) for f in sorted((run_dir / "weights").glob("*.safetensors"))}


def assert_same_run(a: Path, b: Path) -> None:
    import json

    import torch

    ra, rb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ra["eval"] == rb["eval"]
    for key in ("steps", "planned_steps", "samples", "tokens"):
        assert ra["train"][key] == rb["train"][key], key
    assert ra["params"] == rb["params"]
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        assert wa[name].keys() == wb[name].keys()
        assert all(torch.equal(wa[name][k], wb[name][k]) for k in wa[name]), name


def test_sigkill_then_resume_true_ends_as_the_uninterrupted_run(tmp_path, sst2_available):
    import torch

    # The interrupted run: train.py as a user starts it, killed with SIGKILL once it has checkpointed.
    command = [sys.executable, str(ROOT / "train.py"), *TINY, *LONG]
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(tmp_path.glob("runs/*/*/*/*/checkpoint/last.ckpt")) and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, first.stderr.read()[-2000:]
    (cut,) = [p.parents[1] for p in tmp_path.glob("runs/*/*/*/*/checkpoint/last.ckpt")]
    assert not (cut / "metrics.json").exists() and not (cut / "weights").exists()

    # The checkpoint holds what trains and nothing of the frozen base.
    ckpt = torch.load(cut / "checkpoint" / "last.ckpt", weights_only=False)
    saved = sum(t.numel() for t in ckpt["state_dict"].values())
    assert 4 <= ckpt["global_step"] < 96 and ckpt["global_step"] % 4 == 0
    assert all(".lora_" in k or ".classifier." in k for k in ckpt["state_dict"]), sorted(ckpt["state_dict"])[:3]
    assert {"optimizer_states", "lr_schedulers", "loops", "peftlab"} <= ckpt.keys() and set(ckpt["peftlab"]["rng"]) >= {"torch", "python", "numpy"}
    assert not list(cut.glob("checkpoint/.*.tmp"))

    # The same command again, with resume=true: it finds the folder and finishes it there.
    resumed = run_cli(*TINY, *LONG, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in tmp_path.glob("runs/*/*/*/*")] == [cut.name]  # no second folder
    assert not (cut / "checkpoint").exists()  # a finished run has nothing to resume

    reference = tmp_path / "reference"
    run = train_tiny(reference, *LONG)
    assert_same_run(reference, cut)
    assert saved == run.record.params.trainable


def test_sigterm_and_ctrl_c_fail_the_run_in_one_line_with_the_signals_exit_status(tmp_path, sst2_available):
    """Lightning stops fit on SIGTERM with exit status 0 and on Ctrl-C with 1, silently: a scheduler
    would count a cut-short run as done. Both runs (400 steps) start together, then each gets its
    signal once it trains (SIGTERM once it has a checkpoint)."""
    runs = {"term": (signal.SIGTERM, ["trainer.checkpoint_every=4"]), "int": (signal.SIGINT, [])}
    started = {}
    for name, (_, extra) in runs.items():
        command = [sys.executable, str(ROOT / "train.py"), *TINY, "trainer.max_epochs=50", *extra, f"hydra.run.dir={tmp_path / name}"]
        started[name] = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for name, (signum, _) in runs.items():
        # Training has begun once the first logged losses are on disk (the CSV logger's metrics file).
        deadline = time.time() + 240
        while not list((tmp_path / name).glob("logs/**/metrics.csv")) and started[name].poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if name == "term":
            while not (tmp_path / name / "checkpoint" / "last.ckpt").is_file() and time.time() < deadline:
                time.sleep(0.05)
        started[name].send_signal(signum)
    for name, (signum, _) in runs.items():
        stderr = started[name].communicate(timeout=120)[1]
        assert started[name].returncode == 128 + signum, stderr[-2000:]
        last = stderr.strip().splitlines()[-1]
        assert "Traceback" not in stderr and not (tmp_path / name / "metrics.json").exists()
        how = "SIGTERM" if name == "term" else r"Ctrl-C \(SIGINT\)"
        folder = re.escape(str(tmp_path / name))
        then = f"continue it with resume={folder}$" if name == "term" else r"train it again \(trainer.checkpoint_every=N"
        assert re.match(rf"error: stopped by {how} at step \d+ of 400: the run did not finish \(no metrics.json in {folder}\); {then}", last), last


class Interrupt(Exception):
    """Stands in for a kill inside this process, for the cases below (SIGKILL is tested above)."""


def interrupt_at(step: int):
    import lightning as L

    class Stop(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == step:
                raise Interrupt

    return Stop()


@pytest.mark.parametrize(
    "overrides, every, stop",
    [
        # AdaLoRA: its budget (sensitivity averages, rank pattern) lives outside the weights.
        (["peft=adalora", "peft.deltaT=2", "trainer.max_epochs=2"], 3, 10),
        # Full fine-tuning with gradient accumulation: a checkpoint only on optimizer steps.
        (["peft=full", "trainer.max_epochs=2", "trainer.accumulate_grad_batches=2"], 3, 5),
        # A checkpoint on an epoch's last step, with validations in between.
        (["peft=lora", "trainer.max_epochs=2", "trainer.val_check_interval=3"], 8, 10),
    ],
    ids=["adalora", "full-accumulate", "epoch-end"],
)
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, sst2_available, overrides, every, stop):
    from peftlab.config import validate
    from peftlab.recipe import train

    args = [*overrides, f"trainer.checkpoint_every={every}"]
    train_tiny(tmp_path / "reference", *args)
    raw = compose(*TINY, *args)
    with pytest.raises(Interrupt):
        train(validate(raw), raw, tmp_path / "cut", callbacks=[interrupt_at(stop)])
    assert (tmp_path / "cut" / "checkpoint" / "last.ckpt").is_file()
    train_tiny(tmp_path / "cut", *args, "resume=true")
    assert_same_run(tmp_path / "reference", tmp_path / "cut")


def test_a_checkpoint_of_other_weights_is_refused(tmp_path, sst2_available):
    """The last guard, inside the run: the checkpoint's tensors are not the ones this run trains."""
    import shutil

    from conftest import one_line_failure
    from peftlab.config import validate
    from peftlab.recipe import train

    raw = compose(*TINY, "peft=lora", "rank=4", "trainer.checkpoint_every=2")
    with pytest.raises(Interrupt):
        train(validate(raw), raw, tmp_path / "r4", callbacks=[interrupt_at(3)])
    shutil.copytree(tmp_path / "r4" / "checkpoint", tmp_path / "r8" / "checkpoint")
    message = one_line_failure(tmp_path / "r8", "peft=lora", "rank=8", "resume=true")
    assert message.startswith("resume: the checkpoint was written by another config: it holds 26 trained tensors, this run trains 26")
    assert "(0 missing, 0 unexpected, 24 of another shape, e.g. " in message


# --- which folder `resume` continues: decided before torch loads -------------------------------


def interrupted_folder(parent: Path, name: str, *overrides: str, finished: bool = False) -> Path:
    """A run folder as an interrupted run leaves it: its resolved config and a checkpoint."""
    from omegaconf import OmegaConf

    folder = parent / name
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(compose(*TINY, *overrides), resolve=True))
    (folder / "checkpoint" / "last.ckpt").write_bytes(b"checkpoint")
    if finished:
        (folder / "metrics.json").write_text("{}")
    return folder


def plan(*overrides: str) -> list[str]:
    from peftlab.cli import preflight

    return preflight(CONF, [*TINY, *overrides], "config")


def test_resume_true_takes_the_newest_interrupted_run_of_the_same_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parent = tmp_path / "runs" / "sst2" / "tiny-bert" / "lora-r8-s42"
    older = interrupted_folder(parent, "20261201-100000-aaaa", "peft=lora")
    time.sleep(0.01)
    newer = interrupted_folder(parent, "20261201-110000-bbbb", "peft=lora", "trainer.progress_bar=true")  # may differ
    time.sleep(0.01)
    interrupted_folder(parent, "20261201-120000-cccc", "peft=lora", "lr=0.5")  # another config: skipped
    interrupted_folder(parent, "20261201-130000-dddd", "peft=lora", finished=True)  # finished: skipped
    argv = plan("peft=lora", "resume=true")
    rel = newer.relative_to(tmp_path)
    assert argv[-2:] == [f"resume={rel}", f"hydra.run.dir={rel}"] and "resume=true" not in argv
    assert plan("peft=lora", f"resume={older}")[-2:] == [f"resume={older}", f"hydra.run.dir={older}"]
    assert plan("peft=lora", "resume=true", f"hydra.run.dir={older}")[-2:] == [f"hydra.run.dir={older}", f"resume={older}"]
    assert plan("peft=lora") == [*TINY, "peft=lora"]  # no resume: the arguments are untouched


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["resume=true"], "resume=true: no interrupted run of this config with a checkpoint under runs/sst2/tiny-bert/lora-r8-s42/"),
        (["resume=missing-folder"], "resume=missing-folder: no such run folder"),
        (["resume=no-checkpoint"], "resume=no-checkpoint: no checkpoint in it (checkpoint/last.ckpt); a run writes one only with trainer.checkpoint_every=N"),
        (["resume=finished"], "resume=finished: that run finished (metrics.json); there is nothing to resume"),
        (["resume=rank4"], "resume=rank4: its checkpoint is from another config (peft.r: 4 there, 8 here; rank: 4 there, 8 here)"),
        (["resume=rank4", "hydra.run.dir=elsewhere"], "resume=rank4 and hydra.run.dir=elsewhere name two folders"),
        (["-m", "lr=1e-3,1e-4", "resume=true"], "resume= continues one run, not a -m sweep's jobs"),
        (["resume=''"], "resume= is out of range; allowed: false, true (the newest interrupted run of this config), or a run folder"),
        (["trainer.checkpoint_every=0"], "trainer.checkpoint_every=0 is out of range; it must be >= 1 optimizer steps, or null for no checkpoints"),
    ],
    ids=["nothing-to-resume", "no-folder", "no-checkpoint", "finished", "other-config", "two-folders", "sweep", "empty", "every-0"],
)
def test_resume_refusals_are_one_line(tmp_path, monkeypatch, overrides, expected):
    from peftlab.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "no-checkpoint").mkdir()
    (tmp_path / "no-checkpoint" / "config.yaml").write_text("{}")
    interrupted_folder(tmp_path, "finished", "peft=lora", finished=True)
    interrupted_folder(tmp_path, "rank4", "peft=lora", "rank=4")
    with pytest.raises(ConfigError) as caught:
        plan("peft=lora", *overrides)
    assert str(caught.value).startswith(expected), str(caught.value)
    assert "\n" not in str(caught.value)


def test_resume_true_names_how_the_newest_checkpoint_differs(tmp_path, monkeypatch):
    from peftlab.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    interrupted_folder(tmp_path / "runs" / "sst2" / "tiny-bert" / "lora-r8-s42", "20261201-100000-aaaa", "peft=lora", "lr=0.5")
    # 0.000707...: LoRA's 1e-3 at the tiny runs' batch 8 (sst2's budget scales the rate by (8 / 32) ** 0.25)
    with pytest.raises(ConfigError, match=r"20261201-100000-aaaa: its checkpoint is from another config \(lr: 0.5 there, 0.000707\d* here\); allowed: "):
        plan("peft=lora", "resume=true")


def test_saved_config_keys_that_may_differ():
    from peftlab.resume import config_differences

    saved = yaml.safe_load("a: 1\nresume: false\nlogger: {mode: offline}\ntrainer: {threads: 1, batch_size: 8}")
    now = yaml.safe_load("a: 1\nresume: true\nlogger: {mode: disabled}\ntrainer: {threads: 2, batch_size: 16}")
    assert config_differences(saved, now) == ["trainer.batch_size: 8 there, 16 here"]
