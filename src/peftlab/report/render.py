"""A Table as table.md, table.tex (booktabs), table.csv and summary.json.

The text outputs depend only on the table and the provenance, so the same runs give the same
bytes (DVC sees an unchanged output). Bold marks the best value per column as printed: values
that print the same are tied.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Callable, Optional

from peftlab.outputs import json_text
from peftlab.report.provenance import Provenance
from peftlab.report.table import Row, Stat, Table
from peftlab.tasks.base import MetricInfo

DAGGER = "†"
METRIC_TITLES = {"accuracy": "Accuracy", "f1": "F1", "mcc": "MCC", "loss": "Loss", "pearson": "Pearson", "spearman": "Spearman",
                 "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "bleu": "BLEU", "chrf": "chrF"}


@dataclass(frozen=True)
class Column:
    title: str
    text: Callable[[Row], str]  # the cell as printed, without bold or marks
    key: Optional[Callable[[Row], float]] = None  # the printed value as a number, for picking the best
    better: Optional[str] = None  # "max" | "min" | None (never bold)


def columns(table: Table) -> list[Column]:
    cols = [
        Column("Method", lambda r: r.label),
        Column("n", lambda r: str(r.scores[table.main_metric].n)),
        Column("Trainable", lambda r: f"{round(r.trainable.mean):,}", lambda r: round(r.trainable.mean), "min"),
        Column("Trainable (%)", lambda r: _sig3(r.trainable_percent.mean), lambda r: float(_sig3(r.trainable_percent.mean)), "min"),
    ]
    for name in table.metric_names:
        info = table.metric_info[name]
        scale = 100 if info.percent else 1
        cols.append(
            Column(
                metric_heading(info), lambda r, n=name, k=scale: mean_std(r.scores[n], k),
                lambda r, n=name, k=scale: round(k * r.scores[n].mean, 2), "max" if info.higher_is_better else "min",
            )
        )  # fmt: skip
    cols += [
        Column("Peak mem. (MB)", lambda r: f"{r.peak_mb.mean:.0f}", lambda r: round(r.peak_mb.mean), "min"),
        Column("Train time (s)", lambda r: f"{r.time_s.mean:.1f}", lambda r: round(r.time_s.mean, 1), "min"),
        Column("Throughput (samples/s)", lambda r: f"{r.samples_per_s.mean:.1f}", lambda r: round(r.samples_per_s.mean, 1), "max"),
        Column("Weights", lambda r: human_bytes(r.weights_bytes.mean), lambda r: round(r.weights_bytes.mean), "min"),
    ]
    if any(r.latency_ms is not None for r in table.rows):  # runs that timed inference (trainer.latency_examples)
        cols += [
            Column("Latency (ms)", lambda r: _ms(r.latency_ms), lambda r: _ms_key(r.latency_ms), "min"),
            Column("Merged (ms)", lambda r: _ms(r.merged_latency_ms), lambda r: _ms_key(r.merged_latency_ms), "min"),
        ]
    return cols


def _ms(stat: Optional[Stat]) -> str:
    return "–" if stat is None else f"{stat.mean:.2f}"


def _ms_key(stat: Optional[Stat]) -> Optional[float]:
    return None if stat is None else round(stat.mean, 2)


def best_cells(table: Table, cols: list[Column]) -> set[tuple[int, int]]:
    """(row index, column index) of every cell holding its column's best printed value."""
    cells = set()
    for j, col in enumerate(cols):
        if col.better is None or len(table.rows) < 2:
            continue
        keys = [col.key(r) for r in table.rows]
        known = [k for k in keys if k is not None and not math.isnan(k)]  # a cell without a value ("–", "n/a") is never the best
        if not known:
            continue
        best = max(known) if col.better == "max" else min(known)
        cells |= {(i, j) for i, k in enumerate(keys) if k == best}
    return cells


def cell_grid(
    table: Table, escape: Callable[[str], str], bold: Callable[[str], str], mark: str
) -> tuple[list[str], list[list[str]]]:
    """Header and body cells: text escaped for the format, best values bold, the significance mark
    after the main metric."""
    cols = columns(table)
    best = best_cells(table, cols)
    main_col = next(j for j, c in enumerate(cols) if c.title == metric_heading(table.metric_info[table.main_metric]))
    body = []
    for i, row in enumerate(table.rows):
        cells = []
        for j, col in enumerate(cols):
            text = escape(col.text(row))
            text = bold(text) if (i, j) in best else text
            cells.append(text + (mark if j == main_col and row.significant else ""))
        body.append(cells)
    return [escape(c.title) for c in cols], body


# -- caption --------------------------------------------------------------------------------------
def caption_sentences(table: Table, prov: Provenance) -> list[str]:
    """The caption as plain-text sentences; each format escapes and joins them."""
    seeds = ", ".join(map(str, table.seeds))
    data = f"md5 {table.split_md5[:8]}" if table.split_md5 else "md5 unknown"
    if prov.data_dvc_md5:
        data += f"; data.dvc {prov.data_dvc_md5[:8]}"
    out = [
        f"PEFT methods on {table.model}, task {table.task}: {table.split} split (n = {table.n_eval} examples; {data}).",
        f"Mean {chr(177)} sample std over seed{'s' if len(table.seeds) > 1 else ''} {seeds}; n = runs per method. "
        "Best value per column in bold.",
    ]
    if table.baseline_row is not None:
        out.append(
            f"{DAGGER} {metric_title(table.main_metric).lower()} differs significantly from {table.baseline} "
            f"(two-sided Welch's t-test over seeds, p < {table.alpha:g})."
        )
    else:
        several = sum(r.method == table.baseline for r in table.rows) > 1
        out.append(f"{'Several' if several else 'No'} {table.baseline} rows to test against, so no significance marks.")
    timed = [run.record.latency for r in table.rows if r.latency_ms is not None for run in r.runs]
    if timed:
        where = ", ".join(sorted({f"{t.examples} examples on {t.device}" for t in timed}))
        out.append(f"Latency: median forward pass at batch 1 over the first validation examples ({where}), with the method's "
                   "modules and merged into the weights; – : the method cannot be merged.")  # fmt: skip
    out += [f"{r.label} lacks seed{'s' if len(r.missing_seeds) > 1 else ''} {', '.join(map(str, r.missing_seeds))}." for r in table.rows if r.missing_seeds]
    out += [f"Missing run: {m.describe()}." for m in table.missing]
    out.append(f"Git commit {prov.git_commit or 'unknown'}.")
    return out


# -- formats --------------------------------------------------------------------------------------
def markdown(table: Table, prov: Provenance) -> str:
    header, body = cell_grid(table, lambda s: s.replace("|", "\\|"), lambda s: f"**{s}**", DAGGER)
    return markdown_table(header, body, " ".join(caption_sentences(table, prov)))


def markdown_table(header: list[str], body: list[list[str]], caption: str) -> str:
    align = ["---"] + ["--:"] * (len(header) - 1)
    lines = [_md_row(header), _md_row(align), *(_md_row(cells) for cells in body)]
    return "\n".join(lines) + "\n\n" + caption + "\n"


def latex(table: Table, prov: Provenance) -> str:
    header, body = cell_grid(table, tex_escape, lambda s: r"\textbf{" + s + "}", TEX_SPECIAL[DAGGER])
    caption = " ".join(tex_escape(s) for s in caption_sentences(table, prov))
    return latex_tabular(header, body, caption, tex_label(f"tab:peft-{table.model}-{table.task}"))


def latex_tabular(header: list[str], body: list[list[str]], caption: str, label: str) -> str:
    """A booktabs table of cells already escaped for LaTeX."""
    lines = [
        "% Written by `python -m peftlab.report`. In a paper: \\usepackage{booktabs}, then \\input{table.tex}.",
        r"\begin{table}[t]",
        r"  \centering",
        r"  \caption{" + caption + "}",
        r"  \label{" + label + "}",
        r"  \begin{tabular}{l" + "r" * (len(header) - 1) + "}",
        r"    \toprule",
        "    " + " & ".join(header) + r" \\",
        r"    \midrule",
        *("    " + " & ".join(cells) + r" \\" for cells in body),
        r"    \bottomrule",
        r"  \end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def csv_text(table: Table) -> str:
    """Full-precision numbers, one row per method, for further analysis."""
    fields = ["method", "n", "seeds", "missing_seeds", "trainable", "total", "trainable_percent"]
    for name in table.metric_names:
        fields += [f"{name}_mean", f"{name}_std"]
    fields += [f"p_vs_{table.baseline}", "significant", "peak_mb", "train_time_s", "samples_per_s", "weights_bytes",
               "latency_ms", "merged_latency_ms"]  # fmt: skip
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    for r in table.rows:
        values = [r.label, r.scores[table.main_metric].n, " ".join(map(str, r.seeds)), " ".join(map(str, r.missing_seeds)),
                  round(r.trainable.mean), round(r.total.mean), r.trainable_percent.mean]
        for name in table.metric_names:
            values += [r.scores[name].mean, r.scores[name].std]
        values += ["" if r.test is None else r.test.p, r.significant, r.peak_mb.mean, r.time_s.mean, r.samples_per_s.mean, round(r.weights_bytes.mean),
                   *("" if s is None else s.mean for s in (r.latency_ms, r.merged_latency_ms))]  # fmt: skip
        writer.writerow(values)
    return buffer.getvalue()


def summary(table: Table, prov: Provenance) -> dict:
    """summary.json: `dvc metrics show` reads its numbers; per-seed values are kept for re-analysis."""

    def stat(s: Stat) -> dict:
        return {"mean": s.mean, "std": s.std}

    methods = {}
    for r in table.rows:
        methods[r.label] = {
            "n": r.scores[table.main_metric].n,
            "seeds": r.seeds,
            "missing_seeds": r.missing_seeds,
            **{name: stat(r.scores[name]) for name in table.metric_names},
            f"{table.main_metric}_per_seed": list(r.scores[table.main_metric].values),
            f"p_vs_{table.baseline}": None if r.test is None else r.test.p,
            "significant": r.significant,
            "trainable": round(r.trainable.mean),
            "trainable_percent": r.trainable_percent.mean,
            "peak_mb": r.peak_mb.mean,
            "train_time_s": r.time_s.mean,
            "samples_per_s": r.samples_per_s.mean,
            "weights_bytes": round(r.weights_bytes.mean),
            "latency_ms": None if r.latency_ms is None else stat(r.latency_ms),
            "merged_latency_ms": None if r.merged_latency_ms is None else stat(r.merged_latency_ms),
            "runs": [str(run.path) for run in r.runs],
            "scores_from": [run.scores_from for run in r.runs],
        }
    return {
        "model": table.model,
        "task": table.task,
        "split": table.split,
        "n_eval": table.n_eval,
        "split_md5": table.split_md5,
        "data_dvc_md5": prov.data_dvc_md5,
        "git_commit": prov.git_commit,
        "main_metric": table.main_metric,
        "seeds": table.seeds,
        "test": {"name": "welch_t_two_sided", "baseline": table.baseline, "p_threshold": table.alpha},
        "methods": methods,
        "missing_runs": [m.describe() for m in table.missing],
    }


def summary_json(table: Table, prov: Provenance) -> str:
    return json_text(summary(table, prov))


def suite_summary_json(tables: dict[str, Table], prov: Provenance) -> str:
    """The summaries of a suite's tables, by task."""
    return json_text({"tasks": {task: summary(t, prov) for task, t in sorted(tables.items())}})


# -- helpers --------------------------------------------------------------------------------------
def metric_title(name: str) -> str:
    return METRIC_TITLES.get(name, name.replace("_", " ").capitalize())


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def tex_escape(text: str) -> str:
    return "".join(TEX_SPECIAL.get(ch, ch) for ch in text)


TEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"$<$", ">": r"$>$", chr(177): r"$\pm$", DAGGER: r"$^{\dagger}$", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
}


def tex_label(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in ":-" else "-" for ch in text)


def metric_heading(info: MetricInfo) -> str:
    """A metric's column title: its name, (%) when printed as a percentage, and its direction."""
    return f"{metric_title(info.name)}{' (%)' if info.percent else ''} {'↑' if info.higher_is_better else '↓'}"


def mean_std(s: Stat, scale: float) -> str:
    if not math.isfinite(s.mean):  # a seed's score is undefined (a correlation on one example)
        return "n/a"
    return f"{scale * s.mean:.2f}" if s.n < 2 else f"{scale * s.mean:.2f} {chr(177)} {scale * s.std:.2f}"


def _sig3(x: float) -> str:
    return f"{x:.3g}"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
