"""The report on hand-made run folders: exact numbers, bold, marks, LaTeX structure, refusals."""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab.errors import ConfigError, DataError
from peftlab.report.cli import OUTPUT_FILES, run
from peftlab.report.plots import pareto_front
from peftlab.report.stats import mean, std, welch_t_test

SPLIT_MD5 = "0123456789abcdef0123456789abcdef"
DATA_MD5 = "10551d7b1d4fab0b45cb6eae442c4c6d"

# accuracy per seed 1, 2, 3; the other fields are constant per method
METHODS = {
    "full": dict(acc=[0.90, 0.91, 0.92], trainable=22_713_602, peak=1500.0, time=60.0, sps=40.0, bytes=90_000_000),
    "lora": dict(acc=[0.80, 0.82, 0.84], trainable=1_000_000, peak=900.0, time=30.0, sps=80.0, bytes=4_000_000),
    "linear_probe": dict(acc=[0.89, 0.93, 0.91], trainable=770, peak=700.0, time=20.0, sps=120.0, bytes=3_200),
}
TOTAL = 22_713_602


def write_run(folder: Path, method: str, seed: int, accuracy: float, *, model: str = "minilm", with_eval: bool = True,
              trainable: int = 1000, peak: float = 1000.0, time: float = 10.0, sps: float = 50.0, bytes: int = 1000,
              latency: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    metrics = {
        "status": "finished", "model": model, "method": method, "task": "sst2", "seed": seed, "rank": 8,
        "alpha": 16.0, "lr": 0.001, "main_metric": "accuracy",
        # training's own scores differ on purpose: the evaluation file must win when it exists
        "eval": {"split": "validation", "n": 872, "accuracy": accuracy - 0.5 if with_eval else accuracy,
                 "f1": accuracy - 0.01, "loss": 0.3},
        "params": {"trainable": trainable, "total": TOTAL, "trainable_percent": 100.0 * trainable / TOTAL},
        "train": {"steps": 80, "planned_steps": 80, "samples": 2560, "time_s": time, "samples_per_s": sps,
                  "devices": 1, "precision": "32-true"},
        "memory": {"peak_mb": peak, "kind": "cpu_peak_rss"},
        "weights": {"dir": "weights", "bytes": bytes},
        "versions": {},
        **({"latency": latency} if latency else {}),
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if with_eval:
        record = {"split": "validation", "n": 872, "scores": {"accuracy": accuracy, "f1": accuracy - 0.01, "loss": 0.3},
                  "data": {"file": "data/glue/SST-2/dev.tsv", "md5": SPLIT_MD5}}
        (folder / "eval_validation.json").write_text(json.dumps(record))
    return folder


def write_grid(root: Path, methods=METHODS, **kwargs) -> list[Path]:
    folders = []
    for method, spec in methods.items():
        for seed, acc in enumerate(spec["acc"], start=1):
            folders.append(write_run(root / f"{method}-s{seed}", method, seed, acc, trainable=spec["trainable"],
                                     peak=spec["peak"], time=spec["time"], sps=spec["sps"], bytes=spec["bytes"], **kwargs))
    return folders


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A git repository with a data.dvc, as the working directory: the caption's commit is known."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.dvc").write_text(f"outs:\n- md5: {DATA_MD5}.dir\n  path: data\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "data.dvc"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, check=True)
    return tmp_path, commit.stdout.strip()


def test_statistics_from_known_values():
    values = [0.80, 0.82, 0.84]
    assert mean(values) == pytest.approx(0.82, abs=1e-15)
    assert std(values) == pytest.approx(0.02, abs=1e-15)
    assert std(values) == pytest.approx(statistics.stdev(values), abs=1e-15)
    assert std([0.5]) == 0.0

    # Welch by hand: se^2 = .02^2/3 + .01^2/3, df from Welch-Satterthwaite, two-sided p from scipy's t.
    a, b = [0.80, 0.82, 0.84], [0.90, 0.91, 0.92]
    result = welch_t_test(a, b)
    va, vb = 0.02**2 / 3, 0.01**2 / 3
    assert result.t == pytest.approx(-0.09 / math.sqrt(va + vb), rel=1e-12)
    assert result.df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 2), rel=1e-12)
    assert result.df == pytest.approx(2.9411764705882355, rel=1e-12)
    assert result.p == pytest.approx(0.006458, abs=5e-7)
    from scipy.stats import ttest_ind

    reference = ttest_ind(a, b, equal_var=False)
    assert result.p == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.t == pytest.approx(reference.statistic, rel=1e-9)

    assert welch_t_test([0.9], b) is None  # one seed: no variance estimate
    assert welch_t_test([0.9, 0.9], [0.8, 0.8]) is None  # no variance on either side


def test_pareto_front():
    # (trainable, accuracy): the probe is cheapest; lora is dominated by the probe (cheaper and better)
    points = [(22_713_602, 91.0), (1_000_000, 82.0), (770, 91.0), (5_000, 95.0)]
    assert pareto_front(points) == [2, 3]


def test_report_numbers_bold_marks_and_files(project, capsys):
    root, commit = project
    folders = write_grid(root / "runs")
    written = run([*map(str, folders), "--out", "results"])
    assert sorted(p.name for p in written) == sorted(OUTPUT_FILES)
    assert all((root / "results" / name).stat().st_size > 0 for name in OUTPUT_FILES)

    summary = json.loads((root / "results" / "summary.json").read_text())
    assert list(summary["methods"]) == ["full", "lora", "linear_probe"]  # most trainable first
    lora, probe = summary["methods"]["lora"], summary["methods"]["linear_probe"]
    assert lora["accuracy"]["mean"] == pytest.approx(0.82, abs=1e-12)  # from eval files, not metrics.json
    assert lora["accuracy"]["std"] == pytest.approx(0.02, abs=1e-12)
    assert lora["accuracy_per_seed"] == [0.80, 0.82, 0.84]
    assert lora["p_vs_full"] == pytest.approx(0.006458, abs=5e-7) and lora["significant"] is True
    assert probe["p_vs_full"] == pytest.approx(1.0) and probe["significant"] is False  # same mean as full
    assert summary["methods"]["full"]["p_vs_full"] is None
    assert lora["n"] == 3 and lora["trainable"] == 1_000_000 and lora["weights_bytes"] == 4_000_000
    assert summary["split_md5"] == SPLIT_MD5 and summary["data_dvc_md5"] == DATA_MD5
    assert summary["git_commit"] == commit and summary["seeds"] == [1, 2, 3]

    md = (root / "results" / "table.md").read_text().splitlines()
    assert md[0] == ("| Method | n | Trainable | Trainable (%) | Accuracy (%) ↑ | F1 (%) ↑ | Peak mem. (MB) "
                     "| Train time (s) | Throughput (samples/s) | Weights |")
    assert md[2] == "| full | 3 | 22,713,602 | 100 | **91.00 ± 1.00** | **90.00 ± 1.00** | 1500 | 60.0 | 40.0 | 85.8 MB |"
    assert md[3] == "| lora | 3 | 1,000,000 | 4.4 | 82.00 ± 2.00† | 81.00 ± 2.00 | 900 | 30.0 | 80.0 | 3.8 MB |"
    assert md[4] == ("| linear_probe | 3 | **770** | **0.00339** | **91.00 ± 2.00** | **90.00 ± 2.00** | **700** "
                     "| **20.0** | **120.0** | **3.1 KB** |")
    caption = md[-1]
    assert f"md5 {SPLIT_MD5[:8]}; data.dvc {DATA_MD5[:8]}" in caption
    assert "seeds 1, 2, 3" in caption and "p < 0.05" in caption and "Welch" in caption
    assert caption.endswith(f"Git commit {commit}.")

    rows = list(csv.DictReader((root / "results" / "table.csv").open()))
    assert [r["method"] for r in rows] == ["full", "lora", "linear_probe"]
    assert float(rows[1]["accuracy_mean"]) == pytest.approx(0.82, abs=1e-12)
    assert float(rows[1]["accuracy_std"]) == pytest.approx(0.02, abs=1e-12)
    assert rows[1]["significant"] == "True" and rows[0]["p_vs_full"] == ""


def test_latex_table_structure(project):
    root, commit = project
    run([*map(str, write_grid(root / "runs")), "--out", "results"])
    tex = (root / "results" / "table.tex").read_text()
    lines = [line.strip() for line in tex.splitlines()]
    order = [r"\begin{table}[t]", r"\toprule", r"\midrule", r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    assert [lines.index(x) for x in order] == sorted(lines.index(x) for x in order)
    assert r"\begin{tabular}{lrrrrrrrrr}" in lines  # 10 columns: text, then numbers right-aligned
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    assert len(body) == 3 and all(row.count(" & ") == 9 and row.endswith(r"\\") for row in body)
    assert body[1].startswith(r"lora & 3 & 1,000,000 & 4.4 & 82.00 $\pm$ 2.00$^{\dagger}$ & ")
    assert body[2].startswith(r"linear\_probe & 3 & \textbf{770} & \textbf{0.00339} & \textbf{91.00 $\pm$ 2.00} & ")
    assert r"Accuracy (\%)" in lines[lines.index(r"\toprule") + 1]
    caption = next(line for line in lines if line.startswith(r"\caption{"))
    assert "minilm" in caption and "task sst2" in caption and "validation split (n = 872" in caption
    assert f"Git commit {commit}." in caption and r"$^{\dagger}$" in caption and "_" not in caption.replace(r"\_", "")
    assert r"\label{tab:peft-minilm-sst2}" in lines


def test_same_inputs_same_bytes(project):
    root, _ = project
    folders = [*map(str, write_grid(root / "runs"))]
    run([*folders, "--out", "a"])
    run([*folders, "--out", "b"])
    for name in OUTPUT_FILES:
        assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes(), name


def test_refuses_different_models_unless_grouped(project):
    root, _ = project
    folders = [*map(str, write_grid(root / "runs"))]
    other = write_run(root / "other" / "lora-s1", "lora", 1, 0.7, model="tiny-bert")
    with pytest.raises(ConfigError, match=r"^runs of different models cannot share one table: minilm \(9 runs\), "
                                          r"tiny-bert \(1 runs\); pass --group-by model for one table per model$"):
        run([*folders, str(other), "--out", "results"])
    assert not (root / "results").exists()

    run([*folders, str(other), "--out", "results", "--group-by", "model"])
    assert (root / "results" / "minilm" / "table.md").is_file()
    tiny = json.loads((root / "results" / "tiny-bert" / "summary.json").read_text())
    assert list(tiny["methods"]) == ["lora"] and tiny["model"] == "tiny-bert"

    with pytest.raises(ConfigError, match=r"^--group-by seed: not a grouping key; allowed: model, task$"):
        run([*folders, "--group-by", "seed"])


def test_missing_seeds_and_unfinished_runs_are_named(project, capsys):
    root, _ = project
    methods = {**METHODS, "lora": {**METHODS["lora"], "acc": [0.80, 0.82]}}  # lora lacks seed 3
    write_grid(root / "runs", methods)
    (root / "runs" / "adapter-s1").mkdir()  # started, never finished: no metrics.json
    run(["--runs-dir", "runs", "--methods", "full", "lora", "linear_probe", "adapter", "--seeds", "1", "2", "3", "--out", "results"])

    err = capsys.readouterr().err
    assert "warning: missing run: lora seed 3: runs/lora-s3 (no such folder)" in err
    assert "warning: missing run: adapter seed 1: runs/adapter-s1 (no metrics.json: the run did not finish)" in err
    assert "warning: missing run: adapter seed 2: runs/adapter-s2 (no such folder)" in err
    assert "warning: lora has no run for seed(s) 3" in err
    summary = json.loads((root / "results" / "summary.json").read_text())
    assert summary["methods"]["lora"]["missing_seeds"] == [3] and summary["methods"]["lora"]["n"] == 2
    assert "adapter" not in summary["methods"]
    assert "adapter seed 1: runs/adapter-s1 (no metrics.json: the run did not finish)" in summary["missing_runs"]
    caption = (root / "results" / "table.md").read_text().splitlines()[-1]
    assert "lora lacks seeds 3." not in caption and "lora lacks seed 3." in caption
    assert "Missing run: adapter seed 1: runs/adapter-s1 (no metrics.json: the run did not finish)." in caption


def test_scores_fall_back_to_metrics_json_and_duplicates_are_refused(project):
    root, _ = project
    a = write_run(Path("a"), "lora", 1, 0.8, with_eval=False)  # relative to the project: messages name them so
    b = write_run(Path("b"), "lora", 2, 0.9, with_eval=False)
    run([str(a), str(b), "--out", "results"])
    summary = json.loads((root / "results" / "summary.json").read_text())
    assert summary["methods"]["lora"]["accuracy_per_seed"] == [0.8, 0.9]
    assert summary["methods"]["lora"]["scores_from"] == [str(a / "metrics.json"), str(b / "metrics.json")]

    c = write_run(Path("c"), "lora", 1, 0.7, with_eval=False)
    with pytest.raises(DataError, match=r"^two runs of lora with seed 1: a and c; pass one$"):
        run([str(a), str(c)])
    with pytest.raises(DataError, match=r"^a has no scores on the train split \(no a/eval_train.json\); "
                                        r"run: python -m peftlab.evaluate a split=train$"):
        run([str(a), "--split", "train"])


def test_command_line_errors_are_one_line(tmp_path):
    def report(*args):
        return subprocess.run([sys.executable, "-m", "peftlab.report", *args], cwd=tmp_path, capture_output=True, text=True)

    for args, message in [
        ((), "error: no runs given: pass RUN_FOLDER... or --runs-dir with --methods and --seeds"),
        (("x", "--p", "2"), "error: --p 2.0 is out of range; it must be in (0, 1)"),
        (("--runs-dir", "r"), "error: --runs-dir, --methods and --seeds go together (and --tasks with them): name the folder, the methods and the seeds of the grid"),
        (("--seeds", "one"), "error: argument --seeds: invalid int value: 'one' (see python -m peftlab.report --help)"),
        (("nowhere", "--out", "r"), "error: no finished runs to report; missing: nowhere (no such folder)"),
    ]:
        done = report(*args)
        assert done.returncode == 2, args
        assert done.stderr.strip().splitlines()[-1] == message
        assert "Traceback" not in done.stderr


def test_a_lower_is_better_raw_metric_is_printed_raw_and_the_lowest_is_bold(project, tmp_path):
    """The report follows the run's own metric_info: a perplexity-like main metric, no percent."""
    folders = []
    for method, values in {"full": [2.0, 2.2], "lora": [3.0, 3.4]}.items():
        for seed, value in enumerate(values, start=1):
            folder = write_run(tmp_path / "runs" / f"{method}-s{seed}", method, seed, value, with_eval=False)
            record = json.loads((folder / "metrics.json").read_text())
            record.update(main_metric="perplexity", metric_info={"perplexity": {"higher_is_better": False, "percent": False}})
            record["eval"] = {"split": "validation", "n": 872, "perplexity": value, "loss": 0.3}
            (folder / "metrics.json").write_text(json.dumps(record))
            folders.append(folder)
    run([*map(str, folders), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "table.md").read_text().splitlines()
    header = [c.strip() for c in md[0].split("|")]
    assert "Perplexity ↓" in header
    column = header.index("Perplexity ↓")
    cells = {line.split("|")[1].strip(): line.split("|")[column].strip() for line in md[2:4]}
    assert cells == {"full": "**2.10 ± 0.14**", "lora": "3.20 ± 0.28"}
    assert r"Perplexity $\downarrow$" in (tmp_path / "out" / "table.tex").read_text()


def test_runs_of_several_tasks_make_a_methods_by_tasks_table(project, tmp_path):
    """The paper table: a row per method, a column per task's main metric, the average, bold best."""
    scores = {("sst2", "accuracy"): {"full": [0.90, 0.92], "lora": [0.88, 0.86]},
              ("stsb", "pearson"): {"full": [0.80, 0.82], "lora": [0.84, 0.86]}}  # fmt: skip
    folders = []
    for (task, metric), by_method in scores.items():
        for method, values in by_method.items():
            trainable = 22_000_000 if method == "full" else 300_000
            for seed, value in enumerate(values, start=1):
                folder = write_run(tmp_path / "runs" / f"{task}-{method}-s{seed}", method, seed, value, with_eval=False, trainable=trainable)
                record = json.loads((folder / "metrics.json").read_text())
                record.update(task=task, main_metric=metric)
                record["eval"] = {"split": "validation", "n": 100, metric: value, "loss": 0.3}
                (folder / "metrics.json").write_text(json.dumps(record))
                folders.append(folder)
    written = run([*map(str, folders), "--out", str(tmp_path / "out")])
    out = tmp_path / "out"
    assert {out / "suite.md", out / "suite.tex", out / "suite.csv", out / "sst2" / "table.md", out / "stsb" / "table.md"} <= set(written)
    md = (out / "suite.md").read_text().splitlines()
    assert md[0] == "| Method | Trainable | sst2 Accuracy (%) ↑ | stsb Pearson (%) ↑ | Average |"
    # full: 91.00 and 81.00 -> 86.00; lora: 87.00 and 85.00 -> 86.00 (std of two values 0.02 apart: 1.41)
    assert md[2] == "| full | 22.0M | **91.00 ± 1.41** | 81.00 ± 1.41 | **86.00** |"
    assert md[3] == "| lora | 300.0k | 87.00 ± 1.41 | **85.00 ± 1.41** | **86.00** |"
    assert r"sst2 Accuracy (\%) $\uparrow$" in (out / "suite.tex").read_text()
    rows = list(csv.DictReader((out / "suite.csv").read_text().splitlines()))
    assert float(rows[1]["stsb_pearson_mean"]) == pytest.approx(0.85) and float(rows[1]["average"]) == pytest.approx(86.0)


def test_generation_tasks_join_the_methods_by_tasks_table(project, tmp_path):
    """A generation task's main metric reads as its run records say: ROUGE-L in %, perplexity raw
    and lower-is-better; with a lower-is-better column there is no average to take."""
    scores = {("dialogsum", "rougeL", True): {"zero_shot": [0.20, 0.20], "lora": [0.30, 0.32]},
              ("tinyshakespeare", "perplexity", False): {"zero_shot": [40.0, 40.0], "lora": [20.0, 22.0]}}  # fmt: skip
    folders = []
    for (task, metric, percent), by_method in scores.items():
        for method, values in by_method.items():
            for seed, value in enumerate(values, start=1):
                folder = write_run(tmp_path / "runs" / f"{task}-{method}-s{seed}", method, seed, value, with_eval=False)
                record = json.loads((folder / "metrics.json").read_text())
                record.update(task=task, main_metric=metric,
                              metric_info={metric: {"higher_is_better": percent, "percent": percent}})  # fmt: skip
                record["eval"] = {"split": "validation", "n": 100, metric: value, "loss": 0.3}
                (folder / "metrics.json").write_text(json.dumps(record))
                folders.append(folder)
    run([*map(str, folders), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "suite.md").read_text().splitlines()
    assert md[0] == "| Method | Trainable | dialogsum ROUGE-L (%) ↑ | tinyshakespeare Perplexity ↓ |"
    assert md[2:4] == ["| lora | 1.0k | **31.00 ± 1.41** | **21.00 ± 1.41** |", "| zero_shot | 1.0k | 20.00 ± 0.00 | 40.00 ± 0.00 |"]


def test_latency_columns_unmerged_and_merged(project, tmp_path):
    """Runs that timed inference get two columns; a method that cannot merge shows a dash, never bold."""
    runs = tmp_path / "latency"
    timings = {"lora": (4.0, 3.0), "adapter": (5.0, None), "full": (3.5, 3.5)}
    for method, (unmerged, merged) in timings.items():
        for seed in (1, 2):
            write_run(runs / f"{method}-s{seed}", method, seed, 0.8 + seed / 100,
                      latency={"examples": 32, "batch_size": 1, "unmerged_ms": unmerged + seed / 10, "merged_ms": merged, "device": "cpu"})
    run(["--runs-dir", str(runs), "--methods", "full", "lora", "adapter", "--seeds", "1", "2", "--baseline", "full", "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "table.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert header.endswith("| Latency (ms) | Merged (ms) |")
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[-3:-1]] for line in md.splitlines() if line.startswith("| ") and "-s" not in line}
    assert cells["full"] == ["**3.65**", "3.50"] and cells["lora"] == ["4.15", "**3.00**"] and cells["adapter"] == ["5.15", "–"]
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "out" / "table.csv").open())}
    assert float(rows["lora"]["merged_latency_ms"]) == 3.0 and rows["adapter"]["merged_latency_ms"] == ""
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["methods"]["adapter"]["merged_latency_ms"] is None and summary["methods"]["lora"]["latency_ms"]["mean"] == pytest.approx(4.15)


def test_an_undefined_score_prints_n_a_is_never_best_and_tests_nothing(project, tmp_path):
    """A seed whose score is undefined (null in eval_validation.json, as a one-example correlation
    is) makes its method's cell n/a: not bold, no significance test, null in summary.json."""
    folders = write_grid(tmp_path / "runs")
    lora_seed_1 = tmp_path / "runs" / "lora-s1" / "eval_validation.json"
    scored = json.loads(lora_seed_1.read_text())
    scored["scores"]["accuracy"] = None
    lora_seed_1.write_text(json.dumps(scored))
    run([*map(str, folders), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "table.md").read_text().splitlines()
    column = [c.strip() for c in md[0].split("|")].index("Accuracy (%) ↑")
    cells = {line.split("|")[1].strip(): line.split("|")[column].strip() for line in md[2:5]}
    assert cells == {"full": "**91.00 ± 1.00**", "linear_probe": "**91.00 ± 2.00**", "lora": "n/a"}  # the best: defined cells
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    lora = summary["methods"]["lora"]
    assert lora["accuracy"] == {"mean": None, "std": None} and lora["accuracy_per_seed"][0] is None
    assert lora["p_vs_full"] is None and lora["significant"] is False
    assert welch_t_test([math.nan, 0.8, 0.9], [0.9, 0.91, 0.92]) is None
