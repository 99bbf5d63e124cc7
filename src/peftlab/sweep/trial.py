"""One trial: compose its config, train with the pruning callback, tell Optuna how it ended.

A trial runs in the worker's own process by default (torch, transformers and Lightning are
imported once per worker, and the recipe resets the peak-memory mark per run); `--isolate` runs
each in a fresh process through this module's `__main__`, for leaks or crashes the worker should
survive. Either way the trial's folder is a normal run folder: config.yaml first, metrics.json
last, so a pruned or failed trial reads as an unfinished run.
"""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from peftlab.cli import compose_config
from peftlab.config import validate
from peftlab.errors import RunInterrupted

ERROR_ATTR = "error"


def run_trial(study: optuna.Study, trial: optuna.trial.Trial, conf_dir: Path, overrides: list[str], run_dir: Path, metric: str) -> TrialState:
    """Train and tell: COMPLETE with the final metric, PRUNED, or FAIL with the error kept on the trial."""
    outcome = TrialState.FAIL
    try:
        value = _train(trial, conf_dir, overrides, run_dir, metric)
        outcome = TrialState.COMPLETE
    except optuna.TrialPruned:
        outcome = TrialState.PRUNED
        tell(study, trial, state=TrialState.PRUNED)  # Optuna keeps the last reported value
        return outcome
    except BaseException as err:
        if isinstance(err, Exception) and not isinstance(err, RunInterrupted):  # a failed trial is data, not the end of the sweep
            trial.set_user_attr(ERROR_ATTR, f"{type(err).__name__}: {' '.join(str(err).split())}"[:500])
            tell(study, trial, state=TrialState.FAIL)
            return outcome
        # Ctrl-C or SIGTERM (in training, the recipe's RunInterrupted): leave a record, then stop
        trial.set_user_attr(ERROR_ATTR, "interrupted")
        tell(study, trial, state=TrialState.FAIL)
        raise
    finally:
        _close_wandb_run(failed=outcome == TrialState.FAIL)
        gc.collect()
    tell(study, trial, value)
    return outcome


def tell(study: optuna.Study, trial: optuna.trial.Trial, value: float | None = None, state: TrialState | None = None) -> None:
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as err:
        # GridSampler.after_trial calls study.stop() once the grid is covered, which only works inside
        # study.optimize. Optuna stores the trial's state first (in a finally), and the runner's own
        # count ends the sweep, so nothing is lost.
        if "Study.stop" not in str(err):
            raise


def run_trial_isolated(study: optuna.Study, trial: optuna.trial.Trial, storage_url: str, spec_path: Path, conf_dir: Path,
                       overrides: list[str], run_dir: Path, metric: str) -> TrialState:  # fmt: skip
    """The same, in a child process; a child that dies without telling leaves a FAIL with its exit code."""
    payload = {
        "storage": storage_url, "study": study.study_name, "trial_id": trial._trial_id, "spec": str(spec_path),
        "conf_dir": str(conf_dir), "overrides": overrides, "run_dir": str(run_dir), "metric": metric,
    }  # fmt: skip
    code = subprocess.call([sys.executable, "-m", "peftlab.sweep.trial", json.dumps(payload)])
    frozen = study._storage.get_trial(trial._trial_id)
    if frozen.state == TrialState.RUNNING:
        trial.set_user_attr(ERROR_ATTR, f"trial process exited with code {code} before reporting")
        tell(study, trial, state=TrialState.FAIL)
        return TrialState.FAIL
    return frozen.state


def _train(trial: optuna.trial.Trial, conf_dir: Path, overrides: list[str], run_dir: Path, metric: str) -> float:
    raw = compose_config(conf_dir, overrides)
    cfg = validate(raw)
    from peftlab.recipe import train  # heavy imports: once per worker process
    from peftlab.sweep.pruning import ValidationPruning

    run = train(cfg, raw, run_dir, callbacks=[ValidationPruning(trial, monitor=metric)])
    key, scores = metric.split("/", 1)[1], run.record.eval.values
    if key not in scores:
        raise KeyError(f"{metric} is not among the run's metrics ({', '.join(scores)})")
    value = float(scores[key])
    if not math.isfinite(value):  # Optuna cannot rank it; the trial fails with this reason, its run kept
        raise ValueError(f"{metric} is undefined ({value}) for the finished run in {run_dir}, so the trial has no value")
    return value


def _close_wandb_run(failed: bool) -> None:
    """Lightning's WandbLogger leaves its run open; the next trial would log into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


def _main(payload: dict) -> None:
    from peftlab.sweep.runner import make_storage
    from peftlab.sweep.spec import load_spec

    spec = load_spec(Path(payload["spec"]))
    study = optuna.load_study(study_name=payload["study"], storage=make_storage(payload["storage"]), pruner=spec.pruner())
    trial = optuna.trial.Trial(study, payload["trial_id"])
    run_trial(study, trial, Path(payload["conf_dir"]), payload["overrides"], Path(payload["run_dir"]), payload["metric"])


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
