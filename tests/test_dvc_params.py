"""params.yaml: composed from conf/pipeline/ as `dvc exp run` composes it, and kept in step."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import CONF, ROOT

from peftlab.dvc_params import STAMP_TEXT, check, check_grid, compose
from peftlab.errors import ConfigError


def test_committed_params_yaml_is_the_composition_of_conf_pipeline(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    check(ROOT, tmp_path / "params.ok")  # raises if someone edited conf/pipeline/ without recomposing
    assert (tmp_path / "params.ok").read_text() == STAMP_TEXT


def test_overrides_compose_like_dvc_exp_run_set_param(tmp_path):
    compose(ROOT, ["peft=adalora", "rank=4"], tmp_path / "params.yaml")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["grid"] == {"tasks": ["sst2"], "seeds": [1, 2, 3], "methods": ["adalora"]}
    assert params["rank"] == 4 and params["model"] == "minilm" and params["preset"]["name"] == "quick"

    compose(ROOT, ["preset=paper"], tmp_path / "params.yaml")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["grid"]["seeds"] == [1, 2, 3, 4, 5] and params["preset"]["trainer"] == "gpu"

    # The suite: 8 tasks, each at its CPU budget; DVC's matrix makes a stage per task x method x seed.
    compose(ROOT, ["preset=suite"], tmp_path / "params.yaml")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["grid"]["tasks"] == ["sst2", "cola", "stsb", "mrpc", "rte", "conll2003", "squad", "semeval2010"]
    assert params["preset"]["budget"] == "cpu" and len(params["grid"]["methods"]) == 5
    for task in params["grid"]["tasks"]:
        assert (ROOT / "conf" / "task_budget" / f"cpu_{task}.yaml").is_file()
    assert params["grid"]["methods"] == ["full", "lora", "adalora", "adapter", "linear_probe"]

    # Generation on SmolLM2: the preset picks its own methods (no linear probe), and -S peft=... still wins.
    compose(ROOT, ["preset=generation"], tmp_path / "params.yaml")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["model"] == "smollm2" and params["grid"]["tasks"] == ["dialogsum", "multi30k", "alpaca"]
    assert params["grid"]["methods"] == ["zero_shot", "full", "lora", "adalora", "ia3", "adapter"]
    assert all((ROOT / "conf" / "task_budget" / f"cpu_{task}.yaml").is_file() for task in params["grid"]["tasks"])
    compose(ROOT, ["preset=generation", "peft=lora"], tmp_path / "params.yaml")
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["grid"]["methods"] == ["lora"]


def test_every_method_can_be_the_grid():
    methods = {p.stem for p in (CONF / "peft").glob("*.yaml")}
    choices = {p.stem for p in (CONF / "pipeline" / "peft").glob("*.yaml")}
    assert choices == methods | {"all", "generation"}
    for method in methods:
        assert yaml.safe_load((CONF / "pipeline" / "peft" / f"{method}.yaml").read_text()) == {"grid": {"methods": [method]}}


def test_bad_overrides_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^peft=lorra is not an option; allowed: adalora, adapter, all, bitfit, dora, full, generation, ia3, linear_probe, loha, lokr, lora, loraplus, pissa, prefix_tuning, prompt_tuning, qlora, rslora, vera, zero_shot$"):
        compose(ROOT, ["peft=lorra"], tmp_path / "params.yaml")
    done = subprocess.run([sys.executable, "-m", "peftlab.dvc_params", "--force"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --force: unknown flag; give Hydra overrides (key=value) or --check STAMP_FILE"


@pytest.mark.parametrize("preset", ["quick", "suite", "generation", "paper", "smoke"])
def test_every_presets_grid_cells_are_train_configs_train_py_accepts(tmp_path, preset):
    compose(ROOT, [f"preset={preset}"], tmp_path / "params.yaml")
    check_grid(ROOT, yaml.safe_load((tmp_path / "params.yaml").read_text()))


@pytest.mark.parametrize(("overrides", "message"), [
    (["grid.methods=[lora,lorra]"], "grid cell train@sst2-lorra-1: peft=lorra is not an option; allowed: adalora, adapter, bitfit"),
    (["grid.tasks=[sst2,glue9]"], "grid cell train@glue9-full-1: task=glue9 is not an option; allowed: alpaca, cola"),
    (["grid.seeds=[1,-1]"], "grid cell train@sst2-full--1: seed=-1 is out of range; it must be in [0, 4294967295]"),
    (["rank=0"], "grid cell train@sst2-full-1: rank=0 is out of range; it must be an integer >= 1"),
    (["model=gpt5"], "grid cell train@sst2-full-1: model=gpt5 is not an option; allowed: flan-t5-base"),
    (["preset.budget=cpu", "grid.tasks=[csv]"], "grid cell train@csv-full-1: budget=cpu has no budget for task=csv"),
    (["grid.seeds=[]"], "grid.seeds=[] is out of range; allowed: a non-empty list, e.g. grid.seeds=[1]"),
    (["grid.tasks=sst2"], "grid.tasks='sst2' is out of range; allowed: a non-empty list, e.g. grid.tasks=[sst2]"),
    (["grid.methods=[lora,ia3,lora]"], "grid.methods lists lora twice; allowed: each value once (a grid cell is one run)"),
])  # fmt: skip
def test_a_bad_grid_stops_the_params_stage_before_any_run_trains(tmp_path, monkeypatch, overrides, message):
    """`dvc exp run -S ...` composes params.yaml itself (DVC_EXP_NAME is set); the check then reads it."""
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copytree(ROOT / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    compose(tmp_path, overrides, tmp_path / "params.yaml")
    monkeypatch.setenv("DVC_EXP_NAME", "variant")
    with pytest.raises(ConfigError) as caught:
        check(tmp_path, tmp_path / "pipeline" / "params.ok")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert not (tmp_path / "pipeline" / "params.ok").exists()
