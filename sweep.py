"""Run a W&B sweep file with Optuna: the same search `wandb sweep` runs, on your own machines.

    python sweep.py sweeps/lora.yaml --trials 30                      # TPE + Hyperband on dev accuracy
    python sweep.py sweeps/lora.yaml --trials 30 --workers 2 task.max_train_samples=4000 trainer.batch_size=32
    python sweep.py sweeps/methods.yaml --storage postgresql+psycopg2://user@db-host/sweeps   # one per machine
    optuna-dashboard sqlite:///runs/sweeps/lora/optuna.db             # watch it

Rerunning the same command continues the study (finished trials count towards --trials); a trial
killed mid-run is recorded as failed and run again. Everything lands in runs/sweeps/<study>/:
trial-NNNN/ run folders, trials.csv/.md, best.txt/.yaml, importances.json and plots.
"""

import argparse
import os
import sys
from pathlib import Path

from peftlab.cli import OneLineParser, fail
from peftlab.errors import ConfigError, PeftlabError
from peftlab.outputs import make_output_folder
from peftlab.sweep.check import check_against_config
from peftlab.sweep.runner import SweepError, SweepSettings, default_storage, run_sweep
from peftlab.sweep.spec import load_spec

CONF_DIR = Path(__file__).parent / "conf"
DEFAULT_TRIALS = 20


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
    except PeftlabError as err:
        fail(err)
    os.environ.setdefault("WANDB_SILENT", "true")  # one line per trial from the sweep, not W&B's run summaries
    try:
        # Every check before any trial: the file, its keys against the composed config, the options.
        spec = load_spec(args.sweep_file)
        base = check_against_config(spec, CONF_DIR, args.overrides)
        study = args.study or spec.name or args.sweep_file.stem
        sweep_dir = args.out / study
        if Path(study).name != study or study in (".", ".."):
            raise ConfigError(f"--study {study}: a study name is one folder name under --out; allowed: no '/' or '..'")
        if not 0 <= args.seed < 2**32:
            raise ConfigError(f"--seed={args.seed} is out of range; it must be in [0, {2**32 - 1}]")
        make_output_folder(args.out, "--out")
        if args.storage:
            check_storage(args.storage)
        # `is not None`, not `or`: an explicit --trials 0 is an error, not a request for the default.
        trials = args.trials if args.trials is not None else spec.run_cap or (_grid_size(spec) if spec.method == "grid" else DEFAULT_TRIALS)
        max_failures = args.max_failures if args.max_failures is not None else 1
        for flag, value, low in (("--trials", trials, 1), ("--workers", args.workers, 1), ("--max-failures", max_failures, 1)):
            if value < low:
                raise ConfigError(f"{flag}={value} is out of range; it must be an integer >= {low}")
        cores = os.cpu_count() or 1
        if args.workers > min(trials, cores):  # a worker trains a trial at a time, on at least a core of its own
            raise ConfigError(f"--workers={args.workers} is out of range; allowed: 1 to {min(trials, cores)} "
                              f"(no more than --trials={trials} or this machine's {cores} cores; more machines can share a --storage)")  # fmt: skip
        settings = SweepSettings(
            spec_path=args.sweep_file.resolve(), conf_dir=CONF_DIR, base_overrides=base, study_name=study,
            storage_url=args.storage or default_storage(sweep_dir), sweep_dir=sweep_dir.resolve(), trials=trials,
            workers=args.workers, isolate=args.isolate, seed=args.seed, max_failures=args.max_failures,
        )  # fmt: skip
        print(f"study {study}: {trials} trials, {spec.method} search on {spec.metric} ({spec.goal}), storage {settings.storage_url}", flush=True)
    except PeftlabError as err:
        fail(err)
    try:
        run_sweep(settings)
    except SweepError as err:
        report(settings, spec)  # the failed trials' errors are in trials.md
        fail(err)
    except PeftlabError as err:  # e.g. the study was started with other overrides
        fail(err)
    report(settings, spec)
    return 0


def check_storage(url: str) -> None:
    """A storage URL that cannot be opened fails here, in one line, not in every worker."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    from peftlab.errors import first_line
    from peftlab.sweep.runner import make_storage

    try:
        make_storage(url).engine.dispose()
    except (ArgumentError, NoSuchModuleError, ValueError, ImportError) as err:
        raise ConfigError(
            f"--storage {url}: {first_line(err)}; allowed: an Optuna storage URL such as sqlite:///PATH "
            "or postgresql+psycopg2://USER@HOST/DB"
        ) from None
    except SQLAlchemyError as err:  # a server that is not there, or refuses us
        raise ConfigError(f"--storage {url} cannot be opened: {first_line(err)}") from None


def report(settings: SweepSettings, spec) -> None:
    import optuna

    from peftlab.sweep.outputs import write_outputs
    from peftlab.sweep.runner import make_storage

    study = optuna.load_study(study_name=settings.study_name, storage=make_storage(settings.storage_url))
    for name, where in write_outputs(study, spec, settings.sweep_dir, settings.base_overrides).items():
        print(f"{name}: {where}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = OneLineParser(prog="python sweep.py", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_file", type=Path, help="a W&B sweep file, e.g. sweeps/lora.yaml")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every trial, e.g. task=sst2 trainer.max_epochs=1")
    parser.add_argument("--trials", type=int, help=f"finished trials to end with (default: run_cap, the grid's size, or {DEFAULT_TRIALS})")
    parser.add_argument("--storage", help="an Optuna storage URL (default: sqlite:///runs/sweeps/<study>/optuna.db)")
    parser.add_argument("--study", help="the study's name (default: the file's name: key, or its file name)")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes on the study (default 1)")
    parser.add_argument("--isolate", action="store_true", help="run each trial in a fresh process")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    parser.add_argument("--max-failures", type=int, help="stop once the study holds this many failed trials (default: --trials)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweeps"), help="where sweep folders go (default runs/sweeps)")
    return parser.parse_intermixed_args(argv)


def _grid_size(spec) -> int:
    size = 1
    for values in spec.grid().values():
        size *= len(values)
    return size


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
