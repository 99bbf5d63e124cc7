"""Run folders in, checked records out: what each run scored and cost, and which runs are missing.

Every number the report prints comes from a run's metrics.json (costs, and scores when no
evaluation file exists) or from its eval_<split>.json (scores, written by `peftlab.evaluate`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from peftlab.errors import ConfigError, DataError
from peftlab.evaluate import eval_file_name
from peftlab.outputs import METRICS_FILE
from peftlab.record import RunRecord
from peftlab.tasks.base import MetricInfo

GROUP_KEYS = ("model", "task")


@dataclass
class Run:
    path: Path
    record: RunRecord  # metrics.json as training wrote it
    scores: dict[str, float]  # on the report's split
    n_eval: int
    scores_from: str  # the file the scores come from
    split_md5: Optional[str] = None  # known when an evaluation file recorded it

    def info(self, name: str) -> MetricInfo:
        return self.record.info(name)

    model = property(lambda self: self.record.model.name)
    task = property(lambda self: self.record.task)
    method = property(lambda self: self.record.method.name)
    seed = property(lambda self: self.record.seed)


@dataclass
class Missing:
    """A run the report expected and could not use, with the reason."""

    path: Path
    reason: str
    method: Optional[str] = None
    seed: Optional[int] = None

    def describe(self) -> str:
        what = f"{self.method} seed {self.seed}: " if self.method is not None else ""
        return f"{what}{self.path} ({self.reason})"


@dataclass
class Collected:
    runs: list[Run] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)


def grid_folders(runs_dir: Path, methods: list[str], seeds: list[int], tasks: list[str] = ()) -> list[tuple[Path, str, int]]:
    """The folders a pipeline grid writes: RUNS_DIR/<method>-s<seed>, or RUNS_DIR/<task>/<method>-s<seed>."""
    roots = [runs_dir / t for t in tasks] if tasks else [runs_dir]
    return [(root / f"{m}-s{s}", m, s) for root in roots for m in methods for s in seeds]


def collect(folders: list[tuple[Path, Optional[str], Optional[int]]], split: str, evals_dir: Optional[Path],
            runs_dir: Optional[Path] = None) -> Collected:
    """Read every folder; an unfinished or absent one is recorded as missing, never dropped silently.
    A run's evaluation file is EVALS/<its path under RUNS_DIR>/ (a grid's), or EVALS/<its folder name>/."""
    out = Collected()
    for path, method, seed in folders:
        if not path.is_dir():
            out.missing.append(Missing(path, "no such folder", method, seed))
            continue
        if not (path / METRICS_FILE).is_file():
            out.missing.append(Missing(path, f"no {METRICS_FILE}: the run did not finish", method, seed))
            continue
        name = path.relative_to(runs_dir) if runs_dir is not None and path.is_relative_to(runs_dir) else Path(path.name)
        out.runs.append(read_run(path, split, evals_dir / name if evals_dir else None))
    return out


def read_run(path: Path, split: str, eval_dir: Optional[Path] = None) -> Run:
    """A run's record and its scores on `split`: from eval_<split>.json in `eval_dir` (default: the
    run folder) when there is one, else from training's own validation."""
    record = RunRecord.read(path)
    if record.status != "finished":
        raise DataError(f"{path / METRICS_FILE}: status is {record.status!r}, not 'finished'")
    eval_file = (eval_dir or path) / eval_file_name(split)
    if eval_file.is_file():
        scored = _read_json(eval_file)
        scores = {k: float("nan") if v is None else v for k, v in scored["scores"].items()}  # null: undefined
        return Run(path, record, scores, scored["n"], str(eval_file), (scored.get("data") or {}).get("md5"))
    if record.eval.split != split:
        raise DataError(
            f"{path} has no scores on the {split} split (no {eval_file}); "
            f"run: python -m peftlab.evaluate {path} split={split}"
        )
    return Run(path, record, dict(record.eval.values), record.eval.n, str(path / METRICS_FILE))


def group_runs(runs: list[Run], group_by: list[str]) -> dict[tuple[str, ...], list[Run]]:
    """Runs per table. Different models or tasks in one table are refused unless grouped by them."""
    for key in group_by:
        if key not in GROUP_KEYS:
            raise ConfigError(f"--group-by {key}: not a grouping key; allowed: {', '.join(GROUP_KEYS)}")
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(str(getattr(run, k)) for k in group_by), []).append(run)
    for runs_of_group in groups.values():
        for key in GROUP_KEYS:
            values = sorted({str(getattr(r, key)) for r in runs_of_group})
            if len(values) > 1:
                counts = ", ".join(f"{v} ({sum(str(getattr(r, key)) == v for r in runs_of_group)} runs)" for v in values)
                raise ConfigError(
                    f"runs of different {key}s cannot share one table: {counts}; "
                    f"pass --group-by {','.join(dict.fromkeys([*group_by, key]))} for one table per {key}"
                )
    return groups


def check_same_split(runs: list[Run], split: str) -> None:
    """Scores on different versions of the data are not comparable."""
    hashes = {r.split_md5 for r in runs if r.split_md5}
    if len(hashes) > 1:
        listing = "; ".join(f"{h[:8]}: {', '.join(str(r.path) for r in runs if r.split_md5 == h)}" for h in sorted(hashes))
        raise DataError(f"runs were scored on different versions of the {split} split (md5 {listing})")
    sizes = sorted({r.n_eval for r in runs})
    if len(sizes) > 1:
        raise DataError(f"runs were scored on {split} splits of different sizes: {', '.join(map(str, sizes))} examples")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
