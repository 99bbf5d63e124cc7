"""The command line around Hydra: compose and validate first, report bad input as one line.

Hydra's own errors span several lines and arrive after heavy imports would have started; this
wrapper composes the config with Hydra's compose API, validates it (no torch yet), and only then
hands over to `hydra.main`, so every Hydra flag (--cfg job, -m, hydra.run.dir=...) still works.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from peftlab.config import Config, describe_omegaconf_error, validate
from peftlab.errors import ConfigError, PeftlabError, first_line
from peftlab.outputs import hold_run_folder, make_output_folder

HYDRA_MODES = (("--multirun", "-m"), ("--cfg", "-c"), ("--info", "-i"), ("--shell-completion", "-sc"))
SKIP_PREFLIGHT = {"-h", "--help", "--hydra-help", "--info", "-i", "--shell-completion", "-sc"}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are the project's one-line ConfigError, not a usage block."""

    def error(self, message: str) -> None:
        raise ConfigError(f"{message} (see {self.prog} --help)")


def fail(err: BaseException) -> None:
    if launched_rank() == 0:  # Lightning's DDP ranks run the same command; rank 0 says it, once
        print(f"error: {err}", file=sys.stderr)
    sys.exit(getattr(err, "exit_code", 2))


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the key=value overrides of the config, the hydra.* ones), without Hydra's flags."""
    user, hydra, skip_next = [], [], False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in ("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"):
            skip_next = True
        elif not arg.startswith("-"):
            (hydra if arg.lstrip("+~").startswith(("hydra.", "hydra/")) else user).append(arg)
    return user, hydra


def user_overrides(argv: list[str]) -> list[str]:
    """The key=value overrides, without Hydra's flags and hydra.* settings."""
    return split_overrides(argv)[0]


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs of a `-m` run (rank=4,8 peft=lora,ia3 -> four override lists), as Hydra's basic
    sweeper expands them, so that each is checked before the first one starts."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise ConfigError(describe_hydra_error(err)) from None
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def preflight(conf_dir: Path, argv: list[str], config_name: str) -> list[str]:
    """What can be checked before Hydra starts a job, in well under a second: the config of every
    job (each combination of a -m sweep), Hydra's own overrides, and the run folders named by
    hydra.run.dir or hydra.sweep.dir: not a file, not the project itself, not holding a finished
    run, not held by a live run, not shared by two jobs (all before Hydra writes .hydra/ into them).
    Returns the arguments Hydra gets: `resume=true` becomes the folder it continues."""
    user, hydra = split_overrides(argv)
    multirun = bool({"-m", "--multirun"} & set(argv))
    jobs = sweep_jobs(user) if multirun else [user]
    for job in jobs:
        check_budget(conf_dir, job, config_name)
        validate(compose_config(conf_dir, job, config_name))
    if not {"--cfg", "-c"} & set(argv):
        argv = plan_resume(conf_dir, argv, config_name, multirun)
        user, hydra = split_overrides(argv)
        jobs = jobs if multirun else [user]
    check_hydra_overrides(conf_dir, argv, config_name, jobs, hydra, multirun)
    return argv


def plan_resume(conf_dir: Path, argv: list[str], config_name: str, multirun: bool) -> list[str]:
    """`resume=true` or `resume=<folder>`: the interrupted run's folder, checked (a checkpoint, the
    same config), then named to Hydra as this run's folder, so the run continues where it was."""
    import yaml

    from peftlab.resume import hydra_value, resume_folder

    user, hydra = split_overrides(argv)
    if multirun:
        if any(a.startswith("resume=") and a not in ("resume=false", "resume=False") for a in user):
            raise ConfigError("resume= continues one run, not a -m sweep's jobs; resume each interrupted job by its "
                              "folder (python train.py ... resume=<run folder>), or use sweep.py, which resumes a study")  # fmt: skip
        return argv
    cfg = compose_config(conf_dir, user, config_name)
    if cfg.get("resume") in (False, None):
        return argv
    explicit = None
    if any(a.startswith("hydra.run.dir=") for a in hydra):
        explicit = _job_folder(compose_config(conf_dir, user + hydra, config_name, with_hydra=True), multirun=False)
    default_dir = _job_folder(compose_config(conf_dir, user, config_name, with_hydra=True), multirun=False)
    now = yaml.safe_load(OmegaConf.to_yaml(cfg, resolve=True))
    folder = resume_folder(cfg.resume, default_dir, explicit, now)
    argv = [a for a in argv if not a.startswith("resume=")] + [f"resume={hydra_value(folder)}"]
    if explicit is None:
        argv.append(f"hydra.run.dir={hydra_value(folder)}")
    return argv


def check_hydra_overrides(conf_dir: Path, argv: list[str], config_name: str, jobs: list[list[str]], hydra: list[str], multirun: bool) -> None:
    composed = compose_config(conf_dir, jobs[0] + hydra, config_name, with_hydra=True)  # Hydra's own keys
    if any(a in ("hydra.job.chdir=true", "hydra.job.chdir=True") for a in hydra):
        raise ConfigError("hydra.job.chdir=true is not supported: peftlab reads data relative to where you start it and "
                          "writes into the run folder itself; allowed: hydra.job.chdir=false (the default)")  # fmt: skip
    if {"--cfg", "-c"} & set(argv):
        return  # prints the config; writes nothing
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if not any(a.startswith(f"{key}=") for a in hydra):
        # The default folder carries the time and a per-run id, so nothing can be there yet; but the
        # folder it goes in (runs/<task>/<model>/<label>/, multirun/) must be one we can create.
        default = _hydra_path(composed, key)
        if default is not None:
            make_output_folder(default.parent, key)
        return
    folders: dict[Path, int] = {}
    for number, job in enumerate(jobs):
        extra = [f"hydra.job.num={number}"] if multirun else []
        folder = _job_folder(compose_config(conf_dir, job + hydra + extra, config_name, with_hydra=True), multirun)
        if folder is None:
            return
        if folder in folders:
            raise ConfigError(f"jobs {folders[folder]} and {number} would share the run folder {folder}; "
                              "allowed: a hydra.sweep.subdir that differs per job, such as ${hydra.job.num}")  # fmt: skip
        folders[folder] = number
    for folder in folders:  # all of them checked before any is taken
        check_run_folder(folder, key)


def check_budget(conf_dir: Path, job: list[str], config_name: str) -> None:
    """`budget=cpu` with a task it has no budget for would train at the trainer's own budget, silently."""
    if not any(a.startswith("budget=") and a != "budget=none" for a in job):
        return
    choices = compose_config(conf_dir, job, config_name, with_hydra=True).hydra.runtime.choices
    if not (conf_dir / "task_budget" / f"{choices.task_budget}.yaml").is_file():
        budgets = sorted(p.stem.split("_", 1)[1] for p in (conf_dir / "task_budget").glob(f"{choices.budget}_*.yaml"))
        raise ConfigError(
            f"budget={choices.budget} has no budget for task={choices.task} (no conf/task_budget/{choices.budget}_{choices.task}.yaml); "
            f"allowed: a task of {', '.join(budgets)}, or budget=none and the trainer's own steps"
        )


def _job_folder(cfg: DictConfig, multirun: bool) -> Path | None:
    if not multirun:
        return _hydra_path(cfg, "hydra.run.dir")
    sweep, subdir = _hydra_path(cfg, "hydra.sweep.dir"), _hydra_path(cfg, "hydra.sweep.subdir")
    return None if sweep is None or subdir is None else sweep / subdir


def _hydra_path(cfg: DictConfig, key: str) -> Path | None:
    from omegaconf.errors import OmegaConfBaseException

    try:
        return Path(str(OmegaConf.select(cfg, key, throw_on_missing=True)))
    except OmegaConfBaseException:  # an interpolation only Hydra's run resolves (${hydra:...}): the recipe checks
        return None


def launched_rank() -> int:
    """This process's rank as launchers set it (Lightning's DDP, torchrun, SLURM), 0 when alone."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def check_run_folder(folder: Path, key: str) -> None:
    """A folder a run may write into: not a file, not the working directory, not taken."""
    if str(folder) in ("", ".") or folder.resolve() == Path.cwd().resolve():
        raise ConfigError(f"{key}={folder} is the working directory; allowed: a folder of its own for the run")
    make_output_folder(folder, key)  # not through a file, and creatable here
    if launched_rank() == 0:  # Lightning's DDP ranks rerun this command on rank 0's folder
        hold_run_folder(folder)  # refuses a finished or busy folder, and keeps it from here on


def compose_config(conf_dir: Path, overrides: list[str], config_name: str = "config", with_hydra: bool = False) -> DictConfig:
    """Hydra's composition with errors turned into one ConfigError line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException

    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=with_hydra)
    except MissingConfigException as err:
        raise ConfigError(describe_missing_option(conf_dir, str(err))) from None
    except HydraException as err:
        raise ConfigError(describe_hydra_error(err)) from None
    except ValueError as err:  # the override parser's own refusals (peft=null)
        raise ConfigError(f"{first_line(err)} (in the overrides: {' '.join(overrides)})") from None


def describe_missing_option(conf_dir: Path, message: str) -> str:
    found = re.search(r"Could not find '([^']+)/([^'/]*)'", message)
    if not found:
        return message.splitlines()[0]
    group, option = found.groups()
    options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
    if not options:  # a group of Hydra's own (hydra/launcher): its options are plugins
        return f"{group}={option} is not an option here (a Hydra plugin that is not installed?); allowed: the defaults"
    return f"{group}={option} is not an option; allowed: {', '.join(options)}"


def describe_hydra_error(err: BaseException) -> str:
    from omegaconf.errors import OmegaConfBaseException

    from hydra.errors import OverrideParseException

    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, PeftlabError):
        return str(cause)
    if isinstance(cause, OmegaConfBaseException):
        return describe_omegaconf_error(cause)
    if isinstance(err, OverrideParseException):  # "Error parsing override 'rank'" + the parser's reason
        lines = [line for line in str(err).splitlines() if not line.startswith(("See ", "Error parsing override"))]
        reason = lines[0] if lines else "unreadable"
        return f"{err.override}: not an override Hydra can read ({reason}); write key=value, e.g. rank=8 or peft.target_modules=[query,value]"
    return " ".join(str(err).split("\n")[:1])


def entrypoint(conf_dir: Path, config_name: str = "config") -> Callable:
    """Decorator for a `main(cfg: Config, raw: DictConfig)` run under Hydra with one-line errors."""

    def decorate(task: Callable[[Config, DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def hydra_task(raw: DictConfig) -> Any:
            try:
                return task(validate(raw), raw)
            except PeftlabError as err:
                fail(err)

        def main() -> Any:
            import hydra

            argv = sys.argv[1:]
            modes = [flags[0] for flags in HYDRA_MODES if set(flags) & set(argv)]
            if len(modes) > 1:  # Hydra's own refusal is a ValueError traceback
                fail(ConfigError(f"{' and '.join(modes)} cannot go together; give one of {', '.join(f[0] for f in HYDRA_MODES)}"))
            if not SKIP_PREFLIGHT.intersection(argv):
                try:
                    sys.argv[1:] = preflight(conf_dir, argv, config_name)
                except PeftlabError as err:
                    fail(err)
            return hydra.main(config_path=str(conf_dir.resolve()), config_name=config_name, version_base="1.3")(hydra_task)()

        return main

    return decorate
