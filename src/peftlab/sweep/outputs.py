"""What a sweep leaves in its folder, next to the trial-NNNN/ run folders:

- trials.csv, trials.md: every trial, best first (finished by the metric, then pruned, then failed);
- best.txt: the best trial as one Hydra override line (`python train.py $(cat best.txt)`), best.yaml;
- importances.json: Optuna's parameter importances (fANOVA);
- history.png, parallel.png, importances.png: Optuna's matplotlib visualisations.

All of it is rebuilt from the storage, so rerunning the sweep command (with the study already at N
trials) refreshes it without training anything.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from peftlab.sweep.spec import SweepSpec, hydra_value
from peftlab.sweep.trial import ERROR_ATTR

STATE_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2, TrialState.RUNNING: 3, TrialState.WAITING: 4}


def write_outputs(study: optuna.Study, spec: SweepSpec, sweep_dir: Path, base_overrides: list[str]) -> dict[str, str]:
    """Write every output; returns {output: path or the reason it was skipped}."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study.get_trials(deepcopy=False), spec)
    written = {"trials": _write_tables(rows, spec, sweep_dir)}
    written["best"] = _write_best(study, spec, sweep_dir, base_overrides)
    written["importances"] = _write_importances(study, sweep_dir)
    written.update(_write_plots(study, sweep_dir))
    return written


def trial_rows(trials: list[FrozenTrial], spec: SweepSpec) -> list[dict[str, Any]]:
    sign = -1 if spec.goal == "maximize" else 1

    def order(t: FrozenTrial):
        value = t.value if t.value is not None and math.isfinite(t.value) else None
        return (STATE_ORDER.get(t.state, 9), value is None, sign * value if value is not None else 0, t.number)

    rows = []
    for t in sorted(trials, key=order):
        values = t.user_attrs.get("values", {})
        duration = t.duration.total_seconds() if t.duration else None
        rows.append({
            "trial": t.number,
            "state": t.state.name.lower(),
            spec.metric: t.value,
            **{p.key: values.get(p.key) for p in spec.searched},
            "validations": len(t.intermediate_values),
            "duration_s": round(duration, 1) if duration is not None else None,
            "run_dir": t.user_attrs.get("run_dir"),
            "retry_of": t.user_attrs.get("retry_of"),
            "error": t.user_attrs.get(ERROR_ATTR) or t.system_attrs.get("fail_reason", ""),
        })  # fmt: skip
    return rows


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial  # COMPLETE trials only: a pruned trial's value is not its final score
    except ValueError:
        return None


def _write_tables(rows: list[dict], spec: SweepSpec, sweep_dir: Path) -> str:
    columns = list(rows[0]) if rows else ["trial", "state", spec.metric]
    with open(sweep_dir / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    (sweep_dir / "trials.md").write_text("\n".join(lines) + "\n")
    return str(sweep_dir / "trials.csv")


def _write_best(study: optuna.Study, spec: SweepSpec, sweep_dir: Path, base_overrides: list[str]) -> str:
    best = best_trial(study)
    if best is None:
        return "skipped: no complete trial yet"
    line = base_overrides + best.user_attrs.get("overrides", [])
    (sweep_dir / "best.txt").write_text(" ".join(line) + "\n")
    summary = {
        "study": study.study_name,
        "trial": best.number,
        "metric": {"name": spec.metric, "goal": spec.goal, "value": best.value},
        "values": best.user_attrs.get("values", {}),
        "overrides": line,
        "command": "python train.py " + " ".join(line),
        "run_dir": best.user_attrs.get("run_dir"),
    }
    (sweep_dir / "best.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    return str(sweep_dir / "best.txt")


def _write_importances(study: optuna.Study, sweep_dir: Path) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as err:  # fewer than 2 complete trials, or nothing varied
        return f"skipped: {' '.join(str(err).split())}"
    (sweep_dir / "importances.json").write_text(json.dumps(importances, indent=2) + "\n")
    return str(sweep_dir / "importances.json")


def _write_plots(study: optuna.Study, sweep_dir: Path) -> dict[str, str]:
    names = ("history", "parallel", "importances")
    if best_trial(study) is None:  # Optuna's plots would log "There are no complete trials" for each
        return {f"{name}.png": "skipped: no complete trial yet" for name in names}
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    out = {}
    for name, plot in zip(names, (plots.plot_optimization_history, plots.plot_parallel_coordinate, plots.plot_param_importances)):
        path = sweep_dir / f"{name}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
                axes = plot(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            figure.savefig(path, dpi=100, bbox_inches="tight")
            out[f"{name}.png"] = str(path)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            out[f"{name}.png"] = f"skipped: {' '.join(str(err).split()) or type(err).__name__}"
        finally:
            plt.close("all")
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return hydra_value(value).replace("|", "\\|")
