"""From runs to table rows: one row per method, statistics over seeds, the test against the baseline.

Rendering (Markdown, LaTeX, CSV, JSON) is `render.py`; this module only computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from peftlab.errors import DataError
from peftlab.report.runs import Missing, Run
from peftlab.report.stats import WelchResult, mean, std, welch_t_test
from peftlab.tasks.base import MetricInfo



@dataclass(frozen=True)
class Stat:
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return mean(self.values)

    @property
    def std(self) -> float:
        return std(self.values)


@dataclass
class Row:
    label: str  # the method, plus the settings that tell its rows apart in a sweep
    method: str
    runs: list[Run]  # sorted by seed
    scores: dict[str, Stat]
    trainable: Stat
    trainable_percent: Stat
    total: Stat
    peak_mb: Stat
    time_s: Stat
    samples_per_s: Stat
    weights_bytes: Stat
    latency_ms: Optional[Stat] = None  # batch-1 inference with the method's modules, when every run measured it
    merged_latency_ms: Optional[Stat] = None  # and merged into the weights, for methods that merge
    missing_seeds: list[int] = field(default_factory=list)
    test: Optional[WelchResult] = None  # against the baseline, on the main metric
    significant: bool = False

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


@dataclass
class Table:
    model: str
    task: str
    split: str
    n_eval: int
    split_md5: Optional[str]
    main_metric: str
    metric_names: list[str]  # main metric first
    metric_info: dict[str, MetricInfo]  # direction and printing of each metric
    seeds: list[int]  # every seed any row has
    baseline: str
    alpha: float  # significance threshold
    rows: list[Row]
    missing: list[Missing]

    @property
    def baseline_row(self) -> Optional[Row]:
        rows = [r for r in self.rows if r.method == self.baseline]
        return rows[0] if len(rows) == 1 else None


def build_table(runs: list[Run], missing: list[Missing], split: str, baseline: str, alpha: float) -> Table:
    if not runs:
        raise DataError("no finished runs to report" + (f"; missing: {missing[0].describe()}" if missing else ""))
    first = runs[0]
    main = first.record.main_metric
    names = [main] + sorted(k for k in first.scores if k not in (main, "loss"))
    rows = [_row(label, members, names) for label, members in _rows_by_label(runs).items()]
    # The order of a paper table: most trainable parameters first (full fine-tuning), then by name.
    rows.sort(key=lambda r: (-r.trainable.mean, r.label))
    seeds = sorted({s for r in rows for s in r.seeds})
    for row in rows:
        row.missing_seeds = [s for s in seeds if s not in row.seeds]
    table = Table(
        model=str(first.model), task=str(first.task), split=split, n_eval=first.n_eval,
        split_md5=next((r.split_md5 for r in runs if r.split_md5), None), main_metric=main, metric_names=names,
        metric_info={name: first.info(name) for name in names},
        seeds=seeds, baseline=baseline, alpha=alpha, rows=rows, missing=missing,
    )
    reference = table.baseline_row
    if reference is not None:
        for row in rows:
            if row is not reference:
                row.test = welch_t_test(row.scores[main].values, reference.scores[main].values)
                row.significant = row.test is not None and row.test.p < alpha
    return table


def _rows_by_label(runs: list[Run]) -> dict[str, list[Run]]:
    """A row per method label (lora-r8, full), split further by any effective setting (or lr)
    its runs differ in: "lora-r8 (alpha=32)". Runs that differ only in seed share a row."""
    by_label: dict[str, list[Run]] = {}
    for run in runs:
        by_label.setdefault(run.record.method.label, []).append(run)
    rows: dict[str, list[Run]] = {}
    for label, members in by_label.items():
        settings = [{**r.record.method.settings, "lr": r.record.lr} for r in members]
        keys = dict.fromkeys(k for s in settings for k in s)
        varying = [k for k in keys if len({repr(s.get(k)) for s in settings}) > 1]
        for run, these in zip(members, settings):
            shown = ", ".join(f"{k}={_setting(these.get(k))}" for k in varying)
            rows.setdefault(f"{label} ({shown})" if shown else label, []).append(run)
    for label, members in rows.items():
        seen: dict[int, Run] = {}
        for run in members:
            if run.seed in seen:
                raise DataError(f"two runs of {label} with seed {run.seed}: {seen[run.seed].path} and {run.path}; pass one")
            seen[run.seed] = run
    return rows


def _row(label: str, runs: list[Run], metric_names: list[str]) -> Row:
    runs = sorted(runs, key=lambda r: r.seed)

    def stat(get) -> Stat:
        return Stat(tuple(float(get(r)) for r in runs))

    def latency(field_name: str) -> Optional[Stat]:
        values = [None if r.record.latency is None else getattr(r.record.latency, field_name) for r in runs]
        return None if None in values else Stat(tuple(values))

    return Row(
        label=label,
        method=runs[0].method,
        runs=runs,
        scores={name: stat(lambda r, name=name: r.scores[name]) for name in metric_names},
        trainable=stat(lambda r: r.record.params.trainable),
        trainable_percent=stat(lambda r: r.record.params.trainable_percent),
        total=stat(lambda r: r.record.params.total),
        peak_mb=stat(lambda r: r.record.memory.peak_mb),
        time_s=stat(lambda r: r.record.train.time_s),
        samples_per_s=stat(lambda r: r.record.train.samples_per_s),
        weights_bytes=stat(lambda r: r.record.weights.bytes),
        latency_ms=latency("unmerged_ms"),
        merged_latency_ms=latency("merged_ms"),
    )


def _setting(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)
