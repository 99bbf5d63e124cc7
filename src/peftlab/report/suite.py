"""The methods x tasks table of a paper (the LoRA paper's Table 2): a row per method with its
trainable parameters, a column per task holding that task's main metric as mean ± std over seeds,
the average over tasks, the best per column in bold and the significance marks of each task's own
table. Built from the per-task tables, so every number is one those tables print too.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Optional

from peftlab.report.render import DAGGER, TEX_SPECIAL, mean_std, latex_tabular, markdown_table, metric_heading, tex_escape
from peftlab.report.table import Row, Table


@dataclass
class Suite:
    tasks: list[str]
    tables: dict[str, Table]
    methods: list[str]  # row labels, most trainable parameters first

    def row(self, task: str, method: str) -> Optional[Row]:
        return next((r for r in self.tables[task].rows if r.label == method), None)

    @property
    def averageable(self) -> bool:
        """An average over tasks reads only when every main metric is a higher-is-better percentage."""
        infos = [t.metric_info[t.main_metric] for t in self.tables.values()]
        return all(i.higher_is_better and i.percent for i in infos)

    def average(self, method: str) -> Optional[float]:
        rows = [self.row(task, method) for task in self.tasks]
        if not self.averageable or any(r is None for r in rows):
            return None
        average = sum(100 * r.scores[self.tables[t].main_metric].mean for t, r in zip(self.tasks, rows)) / len(rows)
        return average if math.isfinite(average) else None  # a task's score is undefined

    def trainable(self, method: str) -> float:
        """Mean over the tasks it ran on (heads differ in size between tasks)."""
        counts = [r.trainable.mean for t in self.tasks if (r := self.row(t, method)) is not None]
        return sum(counts) / len(counts)


def build_suite(tables: dict[str, Table]) -> Suite:
    tasks = sorted(tables)
    labels = {r.label for t in tables.values() for r in t.rows}
    suite = Suite(tasks, tables, [])
    suite.methods = sorted(labels, key=lambda m: (-suite.trainable(m), m))
    return suite


def _cells(suite: Suite, escape, bold, mark: str) -> tuple[list[str], list[list[str]]]:
    """Header and body as the format prints them: escaped, best values bold, marks after."""
    header = ["Method", "Trainable"]
    header += [f"{t} {metric_heading(suite.tables[t].metric_info[suite.tables[t].main_metric])}" for t in suite.tasks]
    header += ["Average"] if suite.averageable else []
    best = {}
    for task in suite.tasks:
        table = suite.tables[task]
        info = table.metric_info[table.main_metric]
        values = [v for m in suite.methods if (r := suite.row(task, m)) and not math.isnan(v := round(r.scores[table.main_metric].mean, 6))]
        best[task] = (max if info.higher_is_better else min)(values) if len(values) > 1 else None
    averages = [a for m in suite.methods if (a := suite.average(m)) is not None]
    body = []
    for method in suite.methods:
        cells = [escape(method), human_count(suite.trainable(method))]
        for task in suite.tasks:
            table, row = suite.tables[task], suite.row(task, method)
            if row is None:
                cells.append("—")
                continue
            stat = row.scores[table.main_metric]
            text = escape(mean_std(stat, 100 if table.metric_info[table.main_metric].percent else 1))
            text = bold(text) if best[task] is not None and round(stat.mean, 6) == best[task] else text
            cells.append(text + (mark if row.significant else ""))
        if suite.averageable:
            average = suite.average(method)
            text = "—" if average is None else f"{average:.2f}"
            cells.append(bold(text) if average is not None and len(averages) > 1 and average == max(averages) else text)
        body.append(cells)
    return [escape(h) for h in header], body


def caption(suite: Suite) -> str:
    first = suite.tables[suite.tasks[0]]
    seeds = sorted({s for t in suite.tables.values() for s in t.seeds})
    text = (f"PEFT methods on {first.model} across {len(suite.tasks)} tasks, {first.split} split: each task's main metric, "
            f"mean {chr(177)} sample std over seeds {', '.join(map(str, seeds))}. Best per column in bold.")  # fmt: skip
    if any(r.significant for t in suite.tables.values() for r in t.rows):
        text += f" {DAGGER} differs significantly from {first.baseline} on that task (Welch's t-test, p < {first.alpha:g})."
    if suite.averageable:
        text += " Average: the mean over tasks of the main metrics, for methods run on every task."
    return text


def markdown(suite: Suite) -> str:
    header, body = _cells(suite, lambda s: s.replace("|", "\\|"), lambda s: f"**{s}**", DAGGER)
    return markdown_table(header, body, caption(suite))


def latex(suite: Suite) -> str:
    header, body = _cells(suite, tex_escape, lambda s: r"\textbf{" + s + "}", TEX_SPECIAL[DAGGER])
    return latex_tabular(header, body, tex_escape(caption(suite)), "tab:peft-suite")


def csv_text(suite: Suite) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "trainable", *(f"{t}_{suite.tables[t].main_metric}_{k}" for t in suite.tasks for k in ("mean", "std")), "average"])
    for method in suite.methods:
        values: list = [method, round(suite.trainable(method))]
        for task in suite.tasks:
            row = suite.row(task, method)
            stat = None if row is None else row.scores[suite.tables[task].main_metric]
            values += ["", ""] if stat is None else [stat.mean, stat.std]
        average = suite.average(method)
        writer.writerow([*values, "" if average is None else average])
    return buffer.getvalue()


def human_count(n: float) -> str:
    """Parameter counts as papers print them: 22.7M, 332.5k, 770."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"
