"""params.yaml, composed from conf/pipeline/ exactly as `dvc exp run` composes it.

    python -m peftlab.dvc_params                      # rewrite params.yaml after editing conf/pipeline/
    python -m peftlab.dvc_params peft=adalora rank=4  # with overrides, as `dvc exp run -S` would
    python -m peftlab.dvc_params --check STAMP        # the pipeline's first stage (dvc.yaml)

DVC composes the Hydra config into params.yaml for `dvc exp run` only, never for `dvc repro`
(treeverse/dvc#10750). So params.yaml is committed, this command writes it with DVC's own
composition function (same bytes), and the `params` stage stops a `dvc repro` whose params.yaml
is not what conf/pipeline/ composes to, instead of training a stale grid: `dvc repro` and
`dvc exp run` then always train the same thing. Under `dvc exp run` (DVC_EXP_NAME is set) DVC has
just composed params.yaml itself, overrides included, so the check passes.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from peftlab.errors import ConfigError, PeftlabError, first_line

PARAMS_FILE = "params.yaml"
STAMP_TEXT = "params.yaml is the composition of conf/pipeline/\n"  # constant: downstream stages never rerun for it


def hydra_settings(root: Path) -> dict[str, Any]:
    """DVC's `hydra` section of .dvc/config, checked."""
    from dvc.config import Config

    settings = Config(dvc_dir=str(root / ".dvc"))["hydra"]
    if not settings.get("enabled") or not settings.get("config_dir"):
        raise ConfigError(
            f"{root / '.dvc' / 'config'}: Hydra composition is off; "
            "run: dvc config hydra.enabled true && dvc config hydra.config_dir conf/pipeline && dvc config hydra.config_name grid"
        )
    return settings


def compose(root: Path, overrides: list[str], output: Path) -> None:
    """Write the composed config to `output` with the function `dvc exp run` uses."""
    from hydra.errors import HydraException, MissingConfigException

    from dvc.utils.hydra import compose_and_dump
    from peftlab.cli import describe_hydra_error, describe_missing_option

    settings = hydra_settings(root)
    config_dir = root / settings["config_dir"]
    try:
        compose_and_dump(
            output, str(config_dir.resolve()), None, settings.get("config_name", "config"),
            str(root / settings.get("plugins_path", "")), overrides,
        )
    except MissingConfigException as err:
        raise ConfigError(describe_missing_option(config_dir, str(err))) from None
    except HydraException as err:
        raise ConfigError(describe_hydra_error(err)) from None


def check(root: Path, stamp: Path) -> None:
    """Pass if params.yaml is what conf/pipeline/ composes to (or DVC composed it just now)."""
    import yaml

    params = root / PARAMS_FILE
    found = yaml.safe_load(params.read_text()) if params.is_file() else {}
    if not os.environ.get("DVC_EXP_NAME"):
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / PARAMS_FILE
            compose(root, [], fresh)
            expected = yaml.safe_load(fresh.read_text())
        if found != expected:
            keys = differing_keys(found, expected)
            raise ConfigError(
                f"{PARAMS_FILE} is not what conf/pipeline/ composes to ({', '.join(keys[:4])} differ): "
                f"run `python -m peftlab.dvc_params` after editing conf/pipeline/, or `dvc exp run -S key=value` for a variant"
            )
    check_grid(root, found)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(STAMP_TEXT)


def check_grid(root: Path, params: dict) -> None:
    """Every train stage of the grid, checked as `python train.py` checks its config, before the
    first one trains: `dvc exp run -S 'grid.methods=[lora,lorra]'` fails here, in seconds, not
    after the lora runs. Each stage's command is dvc.yaml's own, with params.yaml's values."""
    import shlex

    import yaml
    from dvc.exceptions import DvcException
    from dvc.parsing.context import Context

    from peftlab.cli import check_budget, compose_config, split_overrides
    from peftlab.config import validate

    grid = params.get("grid") if isinstance(params.get("grid"), dict) else {}
    for axis in GRID_AXES:
        values = grid.get(axis)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{axis}={values!r} is out of range; allowed: a non-empty list, e.g. grid.{axis}=[{GRID_AXES[axis]}]")
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"grid.{axis} lists {', '.join(repeated)} twice; allowed: each value once (a grid cell is one run)")
    command = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["train"]["cmd"]
    tasks, methods, seeds = (grid[axis] for axis in GRID_AXES)
    # Each task x method once, and each seed once: the seed changes nothing else in the config.
    cells = [(t, m, seeds[0]) for t in tasks for m in methods] + [(tasks[0], methods[0], s) for s in seeds[1:]]
    for task, method, seed in cells:
        try:  # DVC's own interpolation of the stage's ${...}
            resolved = Context({**params, "item": {"task": task, "method": method, "seed": seed}}).resolve_str(command)
        except DvcException as err:
            raise ConfigError(f"dvc.yaml's train command cannot be filled from {PARAMS_FILE}: {first_line(err)}") from None
        args = shlex.split(resolved)[2:]  # after `python train.py`
        user, _ = split_overrides(args)
        try:
            check_budget(root / "conf", user, "config")
            validate(compose_config(root / "conf", user))
        except ConfigError as err:
            raise ConfigError(f"grid cell train@{task}-{method}-{seed}: {err}") from None


GRID_AXES = {"tasks": "sst2", "methods": "lora", "seeds": "1"}  # and an example value of each


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(file)"]


def main(argv: Optional[list[str]] = None) -> None:
    from peftlab.cli import fail

    args = sys.argv[1:] if argv is None else argv
    root = Path.cwd()
    try:
        if args[:1] == ["--check"]:
            if len(args) != 2:
                raise ConfigError("usage: python -m peftlab.dvc_params --check STAMP_FILE")
            check(root, Path(args[1]))
            print(f"{PARAMS_FILE}: up to date")
            return
        flags = [arg for arg in args if arg.startswith("-")]
        if flags:
            raise ConfigError(f"{flags[0]}: unknown flag; give Hydra overrides (key=value) or --check STAMP_FILE")
        compose(root, args, root / PARAMS_FILE)
    except PeftlabError as err:
        fail(err)
    print(f"wrote {PARAMS_FILE}" + (f" with {' '.join(args)}" if args else ""))


if __name__ == "__main__":
    main()
