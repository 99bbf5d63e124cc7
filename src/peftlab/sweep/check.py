"""A sweep checked against the composed config before any trial starts.

Every parameter must be a key of the config `train.py` composes (a group such as `peft`, a
top-level key such as `rank`, or a dotted key such as `peft.init_r`), and the extreme values of
its range must pass `peftlab.config.validate`, and settings that depend on the data size must fit
the training split (which is read here, without tokenizing). Otherwise the sweep would start, and
every trial would fail the same way. Light: Hydra and omegaconf only, no torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from peftlab.budget import check_val_check_interval
from peftlab.cli import compose_config
from peftlab.config import Config, config_errors, validate
from peftlab.errors import ConfigError
from peftlab.sweep.spec import FLOAT_VALUED, METRIC_PREFIX, Param, SweepSpec

_ABSENT = object()


def base_overrides(spec: SweepSpec, cli_overrides: list[str]) -> list[str]:
    """What every trial gets: the command line's overrides, then the file's constants it leaves alone.

    A constant of the file (trainer.val_check_interval: 100) can be overridden on the command line,
    for a smaller data set say; a searched key cannot.
    """
    cli_keys = {override_key(o) for o in cli_overrides}
    for p in spec.searched:
        if p.key in cli_keys:
            raise ConfigError(f"{spec.path}: parameters.{p.key}: {p.key} is searched by this sweep; remove {p.key}=... from the command line")
    constants = {p.key: p.value for p in spec.constants if p.key not in cli_keys}
    return list(cli_overrides) + spec.overrides(constants)


def check_against_config(spec: SweepSpec, conf_dir: Path, cli_overrides: list[str]) -> list[str]:
    """Raise a one-line ConfigError naming the file and key, or return the trials' base overrides."""
    compose_config(conf_dir, list(cli_overrides))  # a bad command-line override is reported as train.py does
    base = base_overrides(spec, cli_overrides)
    groups = {p.key for p in spec.params if (conf_dir / p.key).is_dir()}
    first = {p.key: p.extremes()[0] for p in spec.searched}

    # One probe with every searched key at its first value, then one per other extreme of each key.
    probes: list[tuple[Param | None, dict[str, Any]]] = [(None, first)]
    for p in spec.searched:
        probes += [(p, {**first, p.key: v}) for v in p.extremes()[1:]]
    composed: dict[str, tuple] = {}  # (config, typed) per choice of groups: Hydra composes in ~0.1 s
    trials = [_check_probe(spec, conf_dir, base, groups, varied, values, composed) for varied, values in probes]
    for typed in trials:
        _check_against_data(spec, typed)
    for _, typed in composed.values():
        # Lightning's DDP starts its other ranks by running the same command line again, which for
        # sweep.py would be a second sweep; W&B's agent (plain train.py runs) has no such problem.
        if typed.trainer.devices != 1 or typed.trainer.num_nodes != 1:
            raise ConfigError(
                f"trainer.devices={typed.trainer.devices} trainer.num_nodes={typed.trainer.num_nodes}: sweep.py runs one "
                "process per trial; allowed: trainer.devices=1 trainer.num_nodes=1 (use --workers for parallel trials)"
            )
    return base


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _check_probe(
    spec: SweepSpec, conf_dir: Path, base: list[str], groups: set[str], varied: Param | None, values: dict[str, Any], composed: dict
) -> Config:
    def error(p: Param | None, message: str) -> ConfigError:
        if p is None:  # nothing the file searches: the command line or the file's constants
            return ConfigError(f"{spec.path} (with its constants and the command line): {message}")
        return ConfigError(f"{spec.path}: parameters.{p.key}: {message}")

    def culprit(err: ConfigError) -> Param | None:
        """The parameter being varied, else the one the message is about (it starts with its key)."""
        return varied or next((p for p in spec.params if re.match(rf"{re.escape(p.key)}\b", str(err))), None)

    # The groups first: the keys a parameter may name depend on the chosen method, model, task.
    choice = spec.overrides({k: v for k, v in values.items() if k in groups})
    label = " ".join(o for o in base + choice if override_key(o) in groups) or "the default groups"
    if label not in composed:
        try:
            cfg = compose_config(conf_dir, base + choice)
            composed[label] = (cfg, validate(cfg))
        except ConfigError as err:
            raise error(culprit(err), str(err)) from None
    cfg, typed = composed[label][0].copy(), composed[label][1]
    for p in spec.params:
        if p.key not in groups and OmegaConf.select(cfg, p.key, default=_ABSENT) is _ABSENT:
            raise error(p, f"{p.key} is not a key of the composed config (with {label}); allowed: {_allowed_near(cfg, p.key)}")
        current = _typed_value(typed, p.key)
        if p.kind in FLOAT_VALUED and isinstance(current, int) and not isinstance(current, bool):
            raise error(p, f"{p.key} is an integer, but W&B's {p.kind} gives floats ({p.key}=16.0); allowed for integers: int_uniform, values")

    # Then the values, set on the composed config (interpolations such as peft.r: ${rank} follow).
    try:
        for key, value in values.items():
            if key not in groups:
                with config_errors():
                    OmegaConf.update(cfg, key, value, merge=False)
        return validate(cfg)
    except ConfigError as err:
        raise error(culprit(err) or (spec.searched[0] if spec.searched else None), str(err)) from None


def _check_against_data(spec: SweepSpec, typed: Config) -> None:
    """The metric must be one the task logs, and settings that fit only some data sizes (a
    validation every 100 batches of a 63-batch epoch) would fail every trial once its data is read:
    count the training examples now and refuse."""
    from peftlab.tasks import TASKS

    task = TASKS.get(typed.task.task, "task.task")
    info = task.info(spec.metric_key)
    if info is None:
        logged = (*task.metric_names(), "loss")
        raise ConfigError(
            f"{spec.path}: metric.name={spec.metric} is not logged by task {typed.task.name}; "
            f"allowed: {', '.join(METRIC_PREFIX + name for name in logged)}"
        )
    if (spec.goal == "maximize") != info.higher_is_better:
        right = "maximize" if info.higher_is_better else "minimize"
        raise ConfigError(
            f"{spec.path}: metric.goal={spec.goal} contradicts {spec.metric}, where "
            f"{'higher' if info.higher_is_better else 'lower'} is better; allowed: metric.goal={right}"
        )
    n_train = _training_examples(typed.task, typed.seed)
    try:
        check_val_check_interval(typed.trainer, n_train, world=1)
    except ConfigError as err:
        raise ConfigError(f"{spec.path}: {err} (on the sweep's command line, or in the file)") from None


_EXAMPLES: dict[str, int] = {}  # training examples per task config: probes share tasks


def _training_examples(task_cfg, seed: int) -> int:
    from peftlab.tasks import TASKS

    key = f"{task_cfg!r} seed={seed}"
    if key not in _EXAMPLES:
        _EXAMPLES[key] = len(TASKS.get(task_cfg.task, "task.task")(task_cfg, seed=seed).examples("train"))
    return _EXAMPLES[key]


def _allowed_near(cfg: DictConfig, key: str) -> str:
    """The keys next to the one that is missing, so a typo is easy to spot."""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    if not isinstance(node, DictConfig):
        return "a key that `python train.py --cfg job` prints"
    keys = sorted(k for k in node.keys() if k != "hydra")
    return ", ".join(f"{parent}.{k}" if parent else str(k) for k in keys)


def _typed_value(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part, None)
    return obj
