"""A W&B sweep file, read as the Optuna search it describes, and rejected early when it is wrong.

The same YAML drives `wandb sweep` (W&B's agent runs `python train.py key=value ...`) and
`sweep.py` (Optuna, in this process). Methods: bayes -> TPE, random -> random, grid -> grid.
Every W&B distribution maps to its Optuna twin:

    constant / value                 fixed override, not searched
    categorical / values             suggest_categorical
    int_uniform                      suggest_int(min, max)
    uniform, q_uniform               suggest_float(min, max[, step=q])
    log_uniform_values               suggest_float(min, max, log=True)
    log_uniform                      the same over [e^min, e^max]     (W&B's bounds are exponents)
    inv_log_uniform_values           the same over [min, max]        (1/X of a log-uniform X is log-uniform)
    inv_log_uniform                  the same over [e^-max, e^-min]
    q_log_uniform[_values]           the log-uniform twin, rounded to a multiple of q (Optuna has no log + step)
    normal, log_normal, beta (+ q_)  a uniform quantile in (0, 1) through the inverse CDF (quantiles.py)
    probabilities (with values)      not representable: Optuna's categorical draws uniformly (warned)

Only this module knows the W&B format; the runner sees `SweepSpec` and `Param`.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from peftlab.errors import ConfigError
from peftlab.sweep import quantiles

METHODS = ("bayes", "grid", "random")
GOALS = ("maximize", "minimize")
TOP_LEVEL_KEYS = ("program", "method", "metric", "parameters", "early_terminate", "command", "name", "description", "project", "entity", "run_cap")
PARAM_KEYS = ("value", "values", "distribution", "probabilities", "min", "max", "mu", "sigma", "q", "a", "b")
DISTRIBUTIONS = (
    "constant", "categorical", "int_uniform", "uniform", "q_uniform",
    "log_uniform", "log_uniform_values", "q_log_uniform", "q_log_uniform_values",
    "inv_log_uniform", "inv_log_uniform_values",
    "normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta",
)  # fmt: skip
# W&B's defaults for the shape keys a distribution leaves out.
DEFAULTS = {"q": 1, "mu": 0.0, "sigma": 1.0, "a": 1.0, "b": 1.0}
# Distributions whose W&B samples are floats (W&B passes rank=16.0), unsuitable for an integer key.
FLOAT_VALUED = tuple(d for d in DISTRIBUTIONS if d not in ("constant", "categorical", "int_uniform"))
# The metrics PeftModule logs as val/<name> and metrics.json keeps under eval.<name>.
METRIC_PREFIX = "val/"
ARGS_MACRO = "${args_no_hyphens}"


@dataclass(frozen=True)
class Param:
    """One searched or fixed key of the composed config (a dotted Hydra key: rank, peft.init_r)."""

    key: str
    kind: str  # the W&B distribution
    space: Optional[BaseDistribution] = None  # what Optuna samples; None for a constant
    value: Any = None  # a constant's value
    to_value: Optional[Callable[[Any], Any]] = field(default=None, compare=False)  # Optuna's draw -> train.py's value

    @property
    def name(self) -> str:
        """The Optuna parameter name; inverse-CDF draws are quantiles, and say so in plots."""
        return f"{self.key}:quantile" if self.kind.removeprefix("q_") in ("normal", "log_normal", "beta") else self.key

    def sample(self, trial) -> Any:
        if self.space is None:
            return self.value
        return self.convert(_suggest(trial, self.name, self.space))

    def convert(self, drawn: Any) -> Any:
        return self.to_value(drawn) if self.to_value else drawn

    def extremes(self) -> list[Any]:
        """Every value a categorical can take, or the two ends of a range: what is checked up front."""
        if self.space is None:
            return [self.value]
        if isinstance(self.space, CategoricalDistribution):
            return [self.convert(c) for c in self.space.choices]
        return [self.convert(self.space.low), self.convert(self.space.high)]


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    method: str
    metric: str  # as W&B sees it: val/accuracy
    goal: str
    params: tuple[Param, ...]
    early_terminate: Optional[dict] = None
    run_cap: Optional[int] = None
    name: Optional[str] = None
    fingerprint: str = ""  # the parsed search (not the comments): a resumed study must match it

    @property
    def metric_key(self) -> str:
        """The key of metrics.json's `eval` section that holds the final value."""
        return self.metric.removeprefix(METRIC_PREFIX)

    @property
    def searched(self) -> list[Param]:
        return [p for p in self.params if p.space is not None]

    @property
    def constants(self) -> list[Param]:
        return [p for p in self.params if p.space is None]

    def grid(self) -> dict[str, list]:
        return {p.name: list(p.space.choices) for p in self.searched}  # grid specs are all categorical

    def sampler(self, seed: int):
        import optuna

        if self.method == "grid":
            return optuna.samplers.GridSampler(self.grid(), seed=seed)
        if self.method == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # constant_liar: parallel workers see each other's running trials and spread out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)

    def pruner(self):
        import optuna

        if self.early_terminate is None:
            return optuna.pruners.MedianPruner()
        et = self.early_terminate
        eta = int(et.get("eta", 3))
        min_iter = et.get("min_iter")
        if min_iter is None:  # W&B's other form: max_iter and s brackets, min_iter = max_iter / eta^s
            min_iter = max(1, int(et["max_iter"] / eta ** int(et.get("s", 0))))
        return optuna.pruners.HyperbandPruner(min_resource=int(min_iter), max_resource=int(et.get("max_iter", 0)) or "auto", reduction_factor=eta)

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """Hydra overrides for one trial's values, in the file's order."""
        return [f"{key}={hydra_value(values[key])}" for key in (p.key for p in self.params) if key in values]


def load_spec(path: Path) -> SweepSpec:
    """Parse and check a sweep file; every mistake is one ConfigError line naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep file")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); allowed: a UTF-8 YAML file") from None
    err = _Errors(path)
    if not isinstance(doc, dict):
        raise err("", "a sweep file is a mapping with method, metric and parameters")
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise err(key, f"unknown key; allowed: {', '.join(TOP_LEVEL_KEYS)}")

    method = doc.get("method")
    if method not in METHODS:
        raise err("method", f"method={method} is not allowed; allowed: {', '.join(METHODS)}")
    metric, goal = _metric(doc.get("metric"), err)
    raw_params = doc.get("parameters")
    if not isinstance(raw_params, dict) or not raw_params:
        raise err("parameters", "give at least one parameter, as key: {values: [...]} or {distribution: ..., min: ..., max: ...}")
    params = tuple(_param(str(key), body, err) for key, body in raw_params.items())
    if method == "grid":
        params = tuple(_as_grid(p, err) for p in params)
    _check_command(doc.get("command"), err)
    run_cap = doc.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        raise err("run_cap", f"run_cap={run_cap} is out of range; it must be an integer >= 1")
    fingerprint = json.dumps({k: doc.get(k) for k in ("method", "metric", "parameters", "early_terminate")}, sort_keys=True, default=str)
    return SweepSpec(
        path=path, method=method, metric=metric, goal=goal, params=params,
        early_terminate=_early_terminate(doc.get("early_terminate"), err), run_cap=run_cap,
        name=doc.get("name"), fingerprint=fingerprint,
    )  # fmt: skip


def hydra_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back (W&B's str() would turn None into 'None')."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    return str(value)


class _Errors:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key + ': ' if key else ''}{message}")


def _metric(metric: Any, err: _Errors) -> tuple[str, str]:
    if not isinstance(metric, dict) or "name" not in metric:
        raise err("metric", "give metric: {name: val/accuracy, goal: maximize} (val/accuracy, val/f1 or val/loss)")
    name, goal = str(metric["name"]), metric.get("goal", "minimize")  # W&B's default goal
    if not name.startswith(METRIC_PREFIX):
        raise err("metric.name", f"metric.name={name} is not logged by train.py; allowed: a validation metric such as val/accuracy, val/f1, val/loss")
    if goal not in GOALS:
        raise err("metric.goal", f"metric.goal={goal} is not allowed; allowed: {', '.join(GOALS)}")
    return name, goal


def _param(key: str, body: Any, err: _Errors) -> Param:
    where = f"parameters.{key}"
    if not isinstance(body, dict):
        raise err(where, "a parameter is a mapping: {values: [...]}, {value: x} or {distribution: ..., min: ..., max: ...}")
    if "parameters" in body:
        raise err(where, "nested parameters are not supported; name the config key with dots instead (peft.init_r)")
    for k in body:
        if k not in PARAM_KEYS:
            raise err(f"{where}.{k}", f"unknown key; allowed: {', '.join(PARAM_KEYS)}")
    kind = body.get("distribution") or _inferred_distribution(body)
    if kind not in DISTRIBUTIONS:
        raise err(f"{where}.distribution", f"distribution={kind} is not a W&B distribution; allowed: {', '.join(DISTRIBUTIONS)}")

    if kind == "constant":
        if "value" not in body:
            raise err(where, "distribution constant needs value")
        return Param(key, kind, value=body["value"])
    if kind == "categorical":
        values = body.get("values")
        if not isinstance(values, list) or not values:
            raise err(f"{where}.values", "give a non-empty list of values")
        if any(isinstance(v, dict) for v in values):
            raise err(f"{where}.values", "a value that is a mapping cannot be passed on the command line; allowed: search its keys one by one (model.random_init.hidden_size)")
        if "probabilities" in body:
            if len(body["probabilities"]) != len(values) or abs(sum(body["probabilities"]) - 1) > 1e-6:
                raise err(f"{where}.probabilities", "give one probability per value, summing to 1")
            warnings.warn(f"{err.path}: {where}.probabilities: W&B uses them; Optuna draws the values uniformly", stacklevel=2)
        # Optuna's choices must be scalars; lists (target_modules) travel as their override text, and
        # the trial gets the list back.
        choices = [v if v is None or isinstance(v, (bool, int, float, str)) else hydra_value(v) for v in values]
        originals = {c: v for c, v in zip(choices, values) if c is not v}
        to_value = (lambda drawn: originals.get(drawn, drawn)) if originals else None
        return Param(key, kind, CategoricalDistribution(choices), to_value=to_value)

    shape = {k: body.get(k, DEFAULTS.get(k)) for k in ("min", "max", "mu", "sigma", "q", "a", "b")}
    for k in _shape_keys(kind):
        if shape[k] is None:
            raise err(where, f"distribution {kind} needs {' and '.join(_shape_keys(kind))}")
        if isinstance(shape[k], bool) or not isinstance(shape[k], (int, float)):
            raise err(f"{where}.{k}", f"{k}={shape[k]} must be a number")
    if "min" in _shape_keys(kind) and shape["min"] > shape["max"]:
        raise err(where, f"min={shape['min']} > max={shape['max']}; min must be <= max")
    for k in ("q", "sigma", "a", "b"):
        if k in _shape_keys(kind) and shape[k] <= 0:
            raise err(f"{where}.{k}", f"{k}={shape[k]} is out of range; it must be > 0")
    return _twin(key, kind, shape, where, err)


def _inferred_distribution(body: dict) -> str:
    """W&B's rules when `distribution` is left out."""
    if "values" in body:
        return "categorical"
    if "value" in body:
        return "constant"
    lo, hi = body.get("min"), body.get("max")
    return "int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform"


def _shape_keys(kind: str) -> tuple[str, ...]:
    base = kind.removeprefix("q_")
    keys = {"normal": ("mu", "sigma"), "log_normal": ("mu", "sigma"), "beta": ("a", "b")}.get(base, ("min", "max"))
    return keys + (("q",) if kind.startswith("q_") else ())


def _twin(key: str, kind: str, s: dict, where: str, err: _Errors) -> Param:
    lo, hi, q = s["min"], s["max"], s["q"]
    integral = all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi, q))
    quantize = _quantizer(q, integral) if kind.startswith("q_") else None

    if kind == "int_uniform":
        if not (isinstance(lo, int) and isinstance(hi, int)):
            raise err(where, f"int_uniform needs integer min and max (got {lo}, {hi})")
        return Param(key, kind, IntDistribution(lo, hi))
    if kind == "uniform":
        return Param(key, kind, FloatDistribution(float(lo), float(hi)))
    if kind == "q_uniform":
        if integral:
            return Param(key, kind, IntDistribution(lo, hi, step=q))
        return Param(key, kind, FloatDistribution(float(lo), float(hi), step=float(q)))

    if kind.removeprefix("q_") in ("log_uniform", "log_uniform_values", "inv_log_uniform", "inv_log_uniform_values"):
        base = kind.removeprefix("q_")
        if base.endswith("_values"):
            if lo <= 0:
                raise err(where, f"min={lo} is out of range; {kind} needs 0 < min <= max")
            low, high = float(lo), float(hi)
        elif base == "log_uniform":
            low, high = math.exp(lo), math.exp(hi)
        else:  # inv_log_uniform: 1/X with ln X uniform in [min, max]
            low, high = math.exp(-hi), math.exp(-lo)
        return Param(key, kind, FloatDistribution(low, high, log=True), to_value=quantize)

    # normal, log_normal, beta and their q_ forms: a quantile through the inverse CDF.
    base = kind.removeprefix("q_")
    if base == "normal":
        inverse = lambda u, mu=s["mu"], sd=s["sigma"]: quantiles.normal_ppf(u, mu, sd)  # noqa: E731
    elif base == "log_normal":
        inverse = lambda u, mu=s["mu"], sd=s["sigma"]: math.exp(quantiles.normal_ppf(u, mu, sd))  # noqa: E731
    else:
        inverse = lambda u, a=s["a"], b=s["b"]: quantiles.beta_ppf(u, a, b)  # noqa: E731
    to_value = (lambda u: quantize(inverse(u))) if quantize else inverse
    return Param(key, kind, FloatDistribution(quantiles.QUANTILE_LOW, quantiles.QUANTILE_HIGH), to_value=to_value)


def _quantizer(q: float, integral: bool) -> Callable[[float], Any]:
    if integral:
        return lambda x: int(round(x / q) * q)
    digits = max(0, -math.floor(math.log10(q))) + 6  # drop float noise: 0.30000000000000004 -> 0.3
    return lambda x: round(round(x / q) * q, digits)


def _as_grid(p: Param, err: _Errors) -> Param:
    """Grid search enumerates: int_uniform and q_uniform become their finite lists of values."""
    if p.space is None or isinstance(p.space, CategoricalDistribution):
        return p
    if p.kind in ("int_uniform", "q_uniform"):
        step = p.space.step
        count = int(round((p.space.high - p.space.low) / step)) + 1
        values = [p.space.low + i * step for i in range(count)]
        if isinstance(p.space, FloatDistribution):
            values = [_quantizer(step, False)(v) for v in values]
        return Param(p.key, p.kind, CategoricalDistribution(values))
    raise err(f"parameters.{p.key}", f"grid search needs a finite set; allowed: values, value, int_uniform, q_uniform (got {p.kind})")


def _early_terminate(et: Any, err: _Errors) -> Optional[dict]:
    if et is None:
        return None
    if not isinstance(et, dict) or et.get("type") != "hyperband":
        kind = et.get("type") if isinstance(et, dict) else et
        raise err("early_terminate.type", f"type={kind} is not allowed; allowed: hyperband")
    for k in et:
        if k not in ("type", "min_iter", "max_iter", "s", "eta", "strict"):
            raise err(f"early_terminate.{k}", "unknown key; allowed: type, min_iter, max_iter, s, eta, strict")
    if et.get("min_iter") is None and et.get("max_iter") is None:
        raise err("early_terminate", "hyperband needs min_iter, or max_iter and s")
    for k in ("min_iter", "max_iter", "s"):
        if k in et and (not isinstance(et[k], int) or et[k] < (0 if k == "s" else 1)):
            raise err(f"early_terminate.{k}", f"{k}={et[k]} is out of range; it must be an integer >= {0 if k == 's' else 1}")
    if "eta" in et and (not isinstance(et["eta"], int) or et["eta"] < 2):
        raise err("early_terminate.eta", f"eta={et['eta']} is out of range; it must be an integer >= 2")
    return dict(et)


def _check_command(command: Any, err: _Errors) -> None:
    """train.py reads Hydra overrides (key=value); W&B's default ${args} would pass --key=value."""
    if command is None:
        raise err("command", f"give a command that passes {ARGS_MACRO}, e.g. [${{env}}, ${{interpreter}}, ${{program}}, {ARGS_MACRO}]")
    if not isinstance(command, list) or ARGS_MACRO not in command:
        raise err("command", f"the command must pass {ARGS_MACRO} (train.py takes Hydra overrides key=value, not --key=value)")


def _suggest(trial, name: str, space: BaseDistribution) -> Any:
    if isinstance(space, CategoricalDistribution):
        return trial.suggest_categorical(name, space.choices)
    if isinstance(space, IntDistribution):
        return trial.suggest_int(name, space.low, space.high, step=space.step, log=space.log)
    return trial.suggest_float(name, space.low, space.high, step=space.step, log=space.log)
