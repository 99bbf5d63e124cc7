"""The command line around Hydra: compose and validate first, report bad input as one line.

Hydra's own errors span several lines and arrive after heavy imports would have started; this
wrapper composes the config with Hydra's compose API, validates it (no torch yet), and only then
hands over to `hydra.main`, so every Hydra flag (--cfg job, -m, hydra.run.dir=...) still works.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from peftlab.config import Config, describe_omegaconf_error, validate
from peftlab.errors import ConfigError, PeftlabError, first_line
from peftlab.outputs import refuse_finished

SKIP_PREFLIGHT = {"-m", "--multirun", "-h", "--help", "--hydra-help", "--info", "-i", "--shell-completion", "-sc"}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are the project's one-line ConfigError, not a usage block."""

    def error(self, message: str) -> None:
        raise ConfigError(f"{message} (see {self.prog} --help)")


def fail(err: BaseException) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def user_overrides(argv: list[str]) -> list[str]:
    """The key=value overrides, without Hydra's flags and hydra.* settings."""
    out, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in ("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"):
            skip_next = True
        elif not arg.startswith("-") and not arg.lstrip("+~").startswith(("hydra.", "hydra/")):
            out.append(arg)
    return out


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


def requested_run_dir(conf_dir: Path, argv: list[str], config_name: str) -> Optional[Path]:
    """The folder a `hydra.run.dir=...` on the command line names, resolved as Hydra will; None when
    the default (unique per run) applies. A folder can only hold a finished run if it was named."""
    from omegaconf.errors import OmegaConfBaseException

    named = [arg for arg in argv if arg.startswith("hydra.run.dir=")]
    if not named:
        return None
    cfg = compose_config(conf_dir, user_overrides(argv) + named, config_name, with_hydra=True)
    try:
        return Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
    except OmegaConfBaseException:  # an interpolation only Hydra's run resolves (${hydra:...}): the recipe checks
        return None


def describe_missing_option(conf_dir: Path, message: str) -> str:
    found = re.search(r"Could not find '([^']+)/([^'/]+)'", message)
    if not found:
        return message.splitlines()[0]
    group, option = found.groups()
    options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
    return f"{group}={option} is not an option; allowed: {', '.join(options)}"


def describe_hydra_error(err: BaseException) -> str:
    from omegaconf.errors import OmegaConfBaseException

    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, PeftlabError):
        return str(cause)
    if isinstance(cause, OmegaConfBaseException):
        return describe_omegaconf_error(cause)
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
            if not SKIP_PREFLIGHT.intersection(argv):
                try:
                    validate(compose_config(conf_dir, user_overrides(argv), config_name))
                    run_dir = None if {"--cfg", "-c"} & set(argv) else requested_run_dir(conf_dir, argv, config_name)
                    if run_dir is not None:
                        refuse_finished(run_dir)  # before Hydra writes its .hydra/ files into it
                except PeftlabError as err:
                    fail(err)
            return hydra.main(config_path=str(conf_dir.resolve()), config_name=config_name, version_base="1.3")(hydra_task)()

        return main

    return decorate
