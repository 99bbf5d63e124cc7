"""`python -m peftlab.report` / `peftlab-report`: build results/ from any run folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from peftlab.cli import OneLineParser
from peftlab.errors import ConfigError, DataError, PeftlabError
from peftlab.outputs import atomic_write, make_output_folder
from peftlab.tasks.base import SPLITS
from peftlab.report import render
from peftlab.report import suite as render_suite
from peftlab.report.suite import build_suite
from peftlab.report.plots import write_plots
from peftlab.report.provenance import Provenance, provenance
from peftlab.report.runs import check_same_split, collect, grid_folders, group_runs
from peftlab.report.table import Table, build_table

DEFAULT_BASELINE = "full"  # significance is tested against full fine-tuning when the runs have it
OUTPUT_FILES = ("table.md", "table.tex", "table.csv", "summary.json", "pareto.png", "memory.png")


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m peftlab.report", description=__doc__)
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN_FOLDER", help="finished run folders (with metrics.json)")
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    p.add_argument("--split", default="validation", help="the split to report (default: validation)")
    p.add_argument("--evals", type=Path, help="read eval_<split>.json from EVALS/<run folder name>/ instead of the run folder")
    p.add_argument("--group-by", default="", help="one table per model and/or task: model | task | model,task "
                   "(runs of several tasks: per task, plus suite.md/.tex/.csv, the methods x tasks table)")
    p.add_argument("--baseline", help="the method significance is tested against (default: full, when there are full runs)")
    p.add_argument("--p", type=float, default=0.05, dest="alpha", help="significance threshold (default: 0.05)")
    grid = p.add_argument_group("a pipeline grid (RUNS_DIR/[<task>/]<method>-s<seed>); missing cells are named")
    grid.add_argument("--runs-dir", type=Path)
    grid.add_argument("--methods", nargs="+", default=[])
    grid.add_argument("--seeds", nargs="+", type=int, default=[])
    grid.add_argument("--tasks", nargs="+", default=[], help="the grid's tasks: a folder per task under RUNS_DIR")
    return p


def main(argv: Optional[list[str]] = None) -> None:
    from peftlab.cli import fail

    try:
        written = run(sys.argv[1:] if argv is None else argv)
    except PeftlabError as err:
        fail(err)
    for path in written:
        print(f"wrote {path}")


def run(argv: list[str]) -> list[Path]:
    args = parser().parse_args(argv)
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--p {args.alpha} is out of range; it must be in (0, 1)")
    grid_given = [bool(args.runs_dir), bool(args.methods), bool(args.seeds)]
    if any(grid_given) and not all(grid_given) or args.tasks and not args.runs_dir:
        raise ConfigError("--runs-dir, --methods and --seeds go together (and --tasks with them): name the folder, the methods and the seeds of the grid")
    folders = [(path, None, None) for path in args.runs]
    if args.runs_dir:
        folders += grid_folders(args.runs_dir, args.methods, args.seeds, args.tasks)
    if not folders:
        raise ConfigError("no runs given: pass RUN_FOLDER... or --runs-dir with --methods and --seeds")
    if args.split not in SPLITS:
        raise ConfigError(f"--split {args.split} is not a split; allowed: {', '.join(SPLITS)}")
    if args.evals is not None and not args.evals.is_dir():
        raise ConfigError(f"--evals {args.evals}: no such folder (it holds <run folder name>/eval_<split>.json)")

    collected = collect(folders, args.split, args.evals, args.runs_dir)
    if not collected.runs:
        raise DataError("no finished runs to report; missing: " + "; ".join(m.describe() for m in collected.missing))
    for missing in collected.missing:
        print(f"warning: missing run: {missing.describe()}", file=sys.stderr)
    methods = sorted({run.method for run in collected.runs})
    if args.baseline is not None and args.baseline not in methods:
        raise ConfigError(f"--baseline {args.baseline}: no run of that method; allowed: {', '.join(methods)}")
    baseline = args.baseline or DEFAULT_BASELINE
    group_by = list(dict.fromkeys(k for k in args.group_by.split(",") if k))  # model,model is model
    tasks = {str(run.task) for run in collected.runs}
    if not group_by and len(tasks) > 1:
        group_by = ["task"]  # several tasks: a table per task, and the methods x tasks table over them
    groups = group_runs(collected.runs, group_by)
    prov = provenance()
    written, tables = [], {}
    for key, runs in sorted(groups.items()):
        out_dir = args.out / "-".join(key) if group_by else args.out
        check_same_split(runs, args.split)
        # A missing run has no metrics to tell its group, so every table lists all of them.
        table = build_table(runs, collected.missing, args.split, baseline, args.alpha)
        for row in table.rows:
            if row.missing_seeds:
                print(f"warning: {row.label} has no run for seed(s) {', '.join(map(str, row.missing_seeds))}", file=sys.stderr)
        written += write_report(table, prov, out_dir)
        tables[table.task] = table
    if group_by == ["task"] and len(tables) > 1:
        written += write_suite(build_suite(tables), tables, prov, args.out)
    return written


def write_suite(suite, tables: dict[str, Table], prov: Provenance, out_dir: Path) -> list[Path]:
    """suite.md/.tex/.csv, and a summary.json of every task's summary (the one file `dvc metrics show` reads)."""
    make_output_folder(out_dir, "--out")
    texts = {"suite.md": render_suite.markdown(suite), "suite.tex": render_suite.latex(suite), "suite.csv": render_suite.csv_text(suite),
             "summary.json": render.suite_summary_json(tables, prov)}
    for name, text in texts.items():
        atomic_write(out_dir / name, text)
    return [out_dir / name for name in texts]


def write_report(table: Table, prov: Provenance, out_dir: Path) -> list[Path]:
    make_output_folder(out_dir, "--out")
    texts = {
        "table.md": render.markdown(table, prov),
        "table.tex": render.latex(table, prov),
        "table.csv": render.csv_text(table),
        "summary.json": render.summary_json(table, prov),
    }
    for name, text in texts.items():
        atomic_write(out_dir / name, text)
    return [out_dir / name for name in texts] + write_plots(table, out_dir)

