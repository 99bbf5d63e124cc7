"""`dvc repro` end to end in a temporary copy of the project, on the tiny random model (smoke preset).

One copy serves the tests below, which run in file order: the first `dvc repro`, the no-op second
one, `dvc exp run` agreeing with it, the guard against a stale params.yaml, the partial rerun after a
method's YAML changes, and a failed run that leaves no metrics file and is named by the report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

# One task, two methods (one is edited later), one seed: every train or evaluate stage is a process
# that spends ~10 s importing torch, transformers and Lightning on this machine, so the task axis
# (a table per task, the methods x tasks table) is tested on the report alone (tests/test_report.py).
TASKS, METHODS, SEEDS = ["sst2"], ["full", "lora"], [1]
CELLS = [f"{t}-{m}-{s}" for t in TASKS for m in METHODS for s in SEEDS]
LABELS = {"full": "full", "lora": "lora-r8"}  # the report's row labels: method and size
# Outputs of earlier runs in this checkout are not part of the project.
NOT_COPIED = ("dvc.lock", "results/", "pipeline/", "params.yaml", "runs/", "dvc_plots/")


def sh(repo: Path, *args: str, check: bool = True, env: dict | None = None, merge: bool = False) -> subprocess.CompletedProcess:
    """Run a command in the copy; `merge` puts stderr into stdout, in order (stages write to both)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])  # `python` in dvc.yaml is this one
    done = subprocess.run(
        args, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge else subprocess.PIPE, text=True,
        timeout=600, env={**os.environ, "PATH": path, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{(done.stderr or '')[-3000:]}")
    return done


def dvc(repo: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", "dvc", *args, **kwargs)


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def copy_project(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in listed.stdout.splitlines():
        if name.startswith(NOT_COPIED) or not (ROOT / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "data", dest / "data")  # DVC-tracked, so not in git


def set_yaml_line(path: Path, key: str, value: str) -> None:
    text = re.sub(rf"^{key}:.*$", f"{key}: {value}", path.read_text(), count=1, flags=re.M)
    path.write_text(text)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, sst2_available):
    repo = tmp_path_factory.mktemp("pipeline")
    copy_project(repo)
    # The smoke preset (tiny random BERT) and a two-method grid, through the configs as a user would.
    grid = repo / "conf" / "pipeline" / "grid.yaml"
    grid.write_text(grid.read_text().replace("- preset: quick", "- preset: smoke"))
    (repo / "conf" / "pipeline" / "peft" / "all.yaml").write_text("# @package _global_\ngrid:\n  methods: [full, lora]\n")
    smoke = repo / "conf" / "pipeline" / "preset" / "smoke.yaml"
    smoke.write_text(smoke.read_text().replace("seeds: [1, 2]", "seeds: [1]\n  tasks: [sst2]"))
    sh(repo, sys.executable, "-m", "peftlab.dvc_params")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    sh(repo, *git, "init", "-q")
    sh(repo, *git, "add", "-A")
    sh(repo, *git, "commit", "-qm", "project")
    return repo


def test_first_repro_trains_evaluates_and_reports(repo):
    start = time.perf_counter()
    done = dvc(repo, "repro", env={"PYTHONPROFILEIMPORTTIME": "1"}, merge=True)
    print(f"first dvc repro: {time.perf_counter() - start:.1f} s")
    assert sorted(stages_run(done.stdout)) == sorted(
        ["params", *(f"train@{c}" for c in CELLS), *(f"evaluate@{c}" for c in CELLS), "report"]
    )
    check_code_dependencies(repo, done.stdout)

    dev_files = {"sst2": "data/glue/SST-2/dev.tsv"}
    for task in TASKS:
        for method in METHODS:
            for seed in SEEDS:
                run_dir = repo / "pipeline" / "runs" / task / f"{method}-s{seed}"
                # Every file of the folder is a declared output (a new one would go untracked: declare it in dvc.yaml).
                assert sorted(p.name for p in run_dir.iterdir()) == [".gitignore", "config.yaml", "logs", "metrics.json", "weights"]
                metrics = json.loads((run_dir / "metrics.json").read_text())
                assert (metrics["task"], metrics["method"]["name"], metrics["seed"], metrics["model"]["name"]) == (task, method, seed, "tiny-bert")
                evaluation = json.loads((repo / "pipeline" / "evals" / task / f"{method}-s{seed}" / "eval_validation.json").read_text())
                # Scored from the reloaded weights in another process: equal to what training recorded.
                assert evaluation["matches_training"] is True
                assert evaluation["scores"] == {k: metrics["eval"][k] for k in evaluation["scores"]}
                assert evaluation["n"] == 32 and evaluation["data"]["file"] == dev_files[task]

    # One task: its table straight in results/ (the methods x tasks suite of several: tests/test_report.py).
    summaries = {"sst2": json.loads((repo / "results" / "summary.json").read_text())}
    assert not (repo / "results" / "suite.md").exists()
    for task, main in (("sst2", "accuracy"),):
        summary = summaries[task]
        assert list(summary["methods"]) == [LABELS[m] for m in METHODS] and summary["seeds"] == SEEDS
        assert summary["main_metric"] == main and summary["missing_runs"] == []
        for method in METHODS:
            scores = [
                json.loads((repo / "pipeline" / "evals" / task / f"{method}-s{s}" / "eval_validation.json").read_text())["scores"][main]
                for s in SEEDS
            ]
            assert summary["methods"][LABELS[method]][f"{main}_per_seed"] == scores
        assert summary["data_dvc_md5"] == yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"].removesuffix(".dir")
        for name in ("table.md", "table.tex", "table.csv", "pareto.png", "memory.png"):
            assert (repo / "results" / name).stat().st_size > 0

    shown = dvc(repo, "metrics", "show", "--json")
    assert "results/summary.json" in shown.stdout and "n_eval" in shown.stdout


def check_code_dependencies(repo: Path, output: str) -> None:
    """Every peftlab module a stage imported (seen with -X importtime) is one of its dependencies."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    imported: dict[str, set[str]] = {}
    current = None
    for line in output.splitlines():
        started = re.match(r"Running stage '([^'@]+)", line)
        if started:
            current = started.group(1)
        found = re.search(r"import time:.*\|\s+(peftlab(\.\w+)*)\s*$", line)
        if found and current:
            imported.setdefault(current, set()).add(found.group(1))
    assert set(imported) == {"params", "train", "evaluate", "report"}
    for stage, modules in imported.items():
        deps = [d for d in stages[stage]["deps"] if d.startswith("src/")]
        for module in modules:
            path = "src/" + module.replace(".", "/")
            files = (path + ".py", path + "/__init__.py")
            assert any(f == d or f.startswith(d + "/") for f in files for d in deps), f"{stage} imports {module}: add it to its deps"


def test_second_repro_is_a_fast_no_op(repo):
    lock = (repo / "dvc.lock").read_bytes()
    start = time.perf_counter()
    done = dvc(repo, "repro")
    elapsed = time.perf_counter() - start
    print(f"no-op dvc repro: {elapsed:.1f} s")
    assert stages_run(done.stdout) == [] and "Data and pipelines are up to date." in done.stdout
    assert elapsed <= 5.0
    assert (repo / "dvc.lock").read_bytes() == lock  # fixed run folder names: nothing in the lock depends on time


def test_exp_run_composes_the_same_params_and_trains_nothing(repo):
    params, lock = (repo / "params.yaml").read_bytes(), (repo / "dvc.lock").read_bytes()
    done = dvc(repo, "exp", "run")
    assert stages_run(done.stdout) == []
    assert (repo / "params.yaml").read_bytes() == params and (repo / "dvc.lock").read_bytes() == lock


def test_stale_params_stop_repro_with_one_clear_line(repo):
    smoke = repo / "conf" / "pipeline" / "preset" / "smoke.yaml"
    original = smoke.read_text()
    smoke.write_text(original.replace("seeds: [1]", "seeds: [1, 2]"))
    try:
        done = dvc(repo, "repro", check=False)
        assert done.returncode != 0
        assert stages_run(done.stdout) == ["params"]
        assert (
            "error: params.yaml is not what conf/pipeline/ composes to (grid.seeds differ): run `python -m peftlab.dvc_params` "
            "after editing conf/pipeline/, or `dvc exp run -S key=value` for a variant"
        ) in done.stderr
    finally:
        smoke.write_text(original)
    assert stages_run(dvc(repo, "repro").stdout) == []  # back in step: nothing to do


def test_editing_one_method_reruns_only_its_stages_and_the_report(repo):
    lora = repo / "conf" / "peft" / "lora.yaml"
    set_yaml_line(lora, "dropout", "0.2")
    done = dvc(repo, "repro")
    assert sorted(stages_run(done.stdout)) == ["evaluate@sst2-lora-1", "report", "train@sst2-lora-1"]
    config = yaml.safe_load((repo / "pipeline" / "runs" / "sst2" / "lora-s1" / "config.yaml").read_text())
    assert config["peft"]["dropout"] == 0.2


def test_failed_run_leaves_no_metrics_and_the_report_names_it(repo):
    lora = repo / "conf" / "peft" / "lora.yaml"
    set_yaml_line(lora, "lr", "-1")  # train.py refuses it: the stage fails after DVC removed the old outputs
    done = dvc(repo, "repro", check=False)
    assert done.returncode != 0 and stages_run(done.stdout)[-1].endswith("-lora-1")
    assert re.search(r"^error: (peft\.)?lr=-1(\.0)? is out of range", done.stderr, flags=re.M)
    failed = stages_run(done.stdout)[-1].split("@")[1].split("-")[0]  # the task whose lora stage DVC ran first
    assert not (repo / "pipeline" / "runs" / failed / "lora-s1" / "metrics.json").exists()

    report = sh(repo, sys.executable, "-m", "peftlab.report", "--runs-dir", "pipeline/runs", "--tasks", failed, "--methods", *METHODS,
                "--seeds", *map(str, SEEDS), "--evals", "pipeline/evals", "--out", "partial")
    missing = f"lora seed 1: pipeline/runs/{failed}/lora-s1 (no metrics.json: the run did not finish)"
    assert f"warning: missing run: {missing}" in report.stderr
    summary = json.loads((repo / "partial" / "summary.json").read_text())
    assert list(summary["methods"]) == ["full"] and summary["missing_runs"] == [missing]
    assert f"Missing run: {missing}." in (repo / "partial" / "table.md").read_text().splitlines()[-1]
