"""The run record: what a finished run's metrics.json holds, as one dataclass.

The recipe builds a `RunRecord` and writes it (last, atomically: its presence marks a finished
run); the report, `peftlab.evaluate`, sweeps and `train.py`'s closing line read it back with
`RunRecord.read`, which checks every field's type and names the first one that is wrong. It records
what ran, not what was asked: the method's effective settings (peft's `r`, the target modules a
target set expanded to, an adapter's width) and the model's real identity (`model_type`, source).

Format 1 (the records before this class, with `model`/`method` as plain names and the `rank` /
`alpha` shortcuts) still loads: `from_json` upgrades it. A newer format than this code knows, or
a damaged file, is one DataError line.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from peftlab.errors import DataError
from peftlab.outputs import METRICS_FILE, atomic_write, json_text
from peftlab.tasks.base import LOSS, MetricInfo

FORMAT = 2
NUMBER = (int, float)


@dataclass(frozen=True)
class ModelIdentity:
    name: str  # its label in run folders and tables: the preset's name, or the weights' own name
    model_type: str  # transformers' config.model_type (bert, roberta, ...): the architecture that ran
    source: str  # hub id or folder the weights came from, or "random <ConfigClass>" for a tiny test model


@dataclass(frozen=True)
class MethodRecord:
    name: str  # the method (lora, adapter-houlsby, full, ...)
    label: str  # with its size, as run folders and table rows show it (lora-r8, adapter-houlsby-b8, full)
    settings: dict[str, Any]  # what took effect on this model (methods/*.settings)


@dataclass(frozen=True)
class Scores:
    split: str
    n: int  # examples scored
    values: dict[str, float]  # metric name -> value, the task's metrics and the loss; NaN where undefined (null in the file)


@dataclass(frozen=True)
class Params:
    trainable: int
    total: int
    trainable_percent: float


@dataclass(frozen=True)
class TrainStats:
    time_s: float
    samples_per_s: float
    steps: Optional[int] = None
    planned_steps: Optional[int] = None
    samples: Optional[int] = None
    devices: Optional[int] = None
    precision: Optional[str] = None  # what Lightning ran (16-mixed runs as bf16-mixed on a CPU)
    tokens: Optional[int] = None  # real (not padding) tokens trained on
    tokens_per_s: Optional[float] = None
    dropout_masks: Optional[str] = None  # philox4x32-10 (peftlab's CPU kernel), torch-mt19937 (its fallback) or torch


@dataclass(frozen=True)
class Memory:
    peak_mb: float
    kind: Optional[str] = None  # cuda_max_allocated, cpu_peak_rss or cpu_max_rss


@dataclass(frozen=True)
class Weights:
    bytes: int
    dir: str = "weights"


@dataclass(frozen=True)
class Latency:
    """Inference at batch 1 on the first validation examples (peftlab.latency): the median forward pass."""

    examples: int
    batch_size: int
    unmerged_ms: float  # with the method's modules, as trained
    merged_ms: Optional[float]  # folded into the base weights; None for a method that cannot merge
    device: str


@dataclass(frozen=True)
class RunRecord:
    task: str
    model: ModelIdentity
    method: MethodRecord
    seed: int
    lr: float
    main_metric: str
    metric_info: dict[str, MetricInfo]  # direction and printing of each metric in `eval`
    eval: Scores
    params: Params
    train: TrainStats
    memory: Memory
    weights: Weights
    versions: dict[str, str] = field(default_factory=dict)
    latency: Optional[Latency] = None  # None: not measured (trainer.latency_examples=0, a sharded model, a failed forward pass, an older record)
    status: str = "finished"
    format: int = FORMAT

    @property
    def main_score(self) -> float:
        return self.eval.values[self.main_metric]

    def info(self, name: str) -> MetricInfo:
        """How a metric reads; records that predate `metric_info` held only higher-is-better
        percentages (accuracy, F1) besides the loss."""
        return self.metric_info.get(name) or (LOSS if name == "loss" else MetricInfo(name))

    def summary_line(self, run_dir: Path) -> str:
        """The line a finished run ends with: its main result, its size, its time and where it is."""
        p = self.params
        return (
            f"finished {self.method.label} on {self.task} ({self.model.name}, seed {self.seed}): "
            f"{self.eval.split} {self.main_metric} {score_text(self.main_score)} (n={self.eval.n}) | trainable {p.trainable:,} of "
            f"{p.total:,} ({p.trainable_percent:.3f}%) | trained in {self.train.time_s:.1f} s | {run_dir}"
        )

    # -- to and from metrics.json ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["eval"] = {"split": self.eval.split, "n": self.eval.n, **self.eval.values}
        data["metric_info"] = {m.name: {"higher_is_better": m.higher_is_better, "percent": m.percent} for m in self.metric_info.values()}
        order = ("format", "status", "task", "model", "method", "seed", "lr", "main_metric", "metric_info", "eval")
        return {key: data[key] for key in (*order, *(k for k in data if k not in order))}

    def write(self, run_dir: Path) -> None:
        atomic_write(run_dir / METRICS_FILE, json_text(self.to_json()))

    @classmethod
    def read(cls, run_dir: Path) -> RunRecord:
        """A run folder's record, or one DataError line saying why it is not one."""
        path = run_dir / METRICS_FILE
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is not a run record: not valid JSON ({err.msg} at line {err.lineno})") from None
        try:
            return cls.from_json(data)
        except _Invalid as err:
            raise DataError(f"{path} is not a run record: {err} (rerun the training to rewrite it)") from None

    @classmethod
    def from_json(cls, data: Any) -> RunRecord:
        if not isinstance(data, dict):
            raise _Invalid("it is not a JSON object")
        version = data.get("format", 1)
        if version == 1:
            data = _upgrade_format_1(data)
        elif version != FORMAT:
            raise _Invalid(f"its format is {version!r}; this peftlab reads formats 1 and {FORMAT} (a newer peftlab wrote it?)")
        get = _Fields(data)
        values = {k: float("nan") if v is None else v for k, v in get.mapping("eval").items() if k not in ("split", "n")}
        main = get.text("main_metric")
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, NUMBER):
                raise _Invalid(f"eval.{name} is {value!r}, not a number")
        if main not in values:
            raise _Invalid(f"eval.{main} (its main metric) is missing")
        model, method = get.inner("model"), get.inner("method")
        train, memory, weights, params = get.inner("train"), get.inner("memory"), get.inner("weights"), get.inner("params")
        return cls(
            task=get.text("task"),
            model=ModelIdentity(model.text("name"), model.text("model_type"), model.text("source")),
            method=MethodRecord(method.text("name"), method.text("label"), method.mapping("settings")),
            seed=get.integer("seed"),
            lr=get.number("lr"),
            main_metric=main,
            metric_info={name: MetricInfo(name, **_metric_info(name, info)) for name, info in get.mapping("metric_info", {}).items()},
            eval=Scores(get.inner("eval").text("split"), get.inner("eval").integer("n"), values),
            params=Params(params.integer("trainable"), params.integer("total"), params.number("trainable_percent")),
            train=TrainStats(
                train.number("time_s"), train.number("samples_per_s"), train.integer("steps", None),
                train.integer("planned_steps", None), train.integer("samples", None), train.integer("devices", None),
                train.text("precision", None), train.integer("tokens", None), train.number("tokens_per_s", None),
                train.text("dropout_masks", None),
            ),
            memory=Memory(memory.number("peak_mb"), memory.text("kind", None)),
            weights=Weights(weights.integer("bytes"), weights.text("dir", "weights")),
            versions=get.mapping("versions", {}),
            latency=_latency(get),
            status=get.text("status"),
            format=FORMAT,
        )


def _latency(get: _Fields) -> Optional[Latency]:
    if get.mapping("latency", None) is None:
        return None
    lat = get.inner("latency")
    return Latency(lat.integer("examples"), lat.integer("batch_size"), lat.number("unmerged_ms"),
                   lat.number("merged_ms", None), lat.text("device"))  # fmt: skip


def score_text(value: float) -> str:
    """A score as lines print it: four decimals, or "undefined" (a correlation of one example)."""
    return f"{value:.4f}" if math.isfinite(value) else "undefined"


def same_scores(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal scores, an undefined one (NaN) equal to another undefined one."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def method_label(name: str, settings: dict[str, Any]) -> str:
    """A method's label from its settings: the name, and the rank or width when it has one."""
    for key, short in (("r", "r"), ("target_r", "r"), ("bottleneck_dim", "b")):
        if isinstance(settings.get(key), int):
            return f"{name}-{short}{settings[key]}"
    return name


def _upgrade_format_1(data: dict[str, Any]) -> dict[str, Any]:
    """A format-1 record in format 2: `model` and `method` were names; its `peft` held the
    effective settings (records before that held only the `rank`/`alpha` shortcuts)."""
    data = dict(data)
    for key in ("model", "method"):
        if not isinstance(data.get(key), str):
            raise _Invalid(f"{key} is {data.get(key)!r}, not a str" if key in data else f"it has no {key}")
    settings = data.get("peft") if isinstance(data.get("peft"), dict) else {k: data[k] for k in ("rank", "alpha") if k in data}
    data["model"] = {"name": data["model"], "model_type": str(data.get("architecture", "unknown")), "source": "unknown"}
    data["method"] = {"name": data["method"], "label": method_label(data["method"], settings), "settings": settings}
    data.setdefault("lr", float("nan"))
    return data


def _metric_info(name: str, info: Any) -> dict[str, bool]:
    if not isinstance(info, dict) or not all(isinstance(info.get(k), bool) for k in ("higher_is_better", "percent")):
        raise _Invalid(f"metric_info.{name} is {info!r}, not {{higher_is_better: bool, percent: bool}}")
    return {"higher_is_better": info["higher_is_better"], "percent": info["percent"]}


class _Invalid(Exception):
    """Why a JSON object is not a run record (becomes one DataError line naming the file)."""


_REQUIRED = object()


class _Fields:
    """Typed access to one JSON object, naming the full key of the first field that is wrong."""

    def __init__(self, data: dict[str, Any], where: str = "") -> None:
        self.data, self.where = data, where

    def _get(self, key: str, types: tuple, kind: str, default: Any) -> Any:
        full = f"{self.where}{key}"
        if key not in self.data or self.data[key] is None:
            if default is _REQUIRED:
                raise _Invalid(f"it has no {full}")
            return default
        value = self.data[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise _Invalid(f"{full} is {value!r}, not {kind}")
        return value

    def text(self, key: str, default: Any = _REQUIRED) -> str:
        return self._get(key, (str,), "a str", default)

    def integer(self, key: str, default: Any = _REQUIRED) -> int:
        return self._get(key, (int,), "an int", default)

    def number(self, key: str, default: Any = _REQUIRED) -> float:
        value = self._get(key, NUMBER, "a number", default)
        return float(value) if value is not None else value

    def mapping(self, key: str, default: Any = _REQUIRED) -> dict[str, Any]:
        return self._get(key, (dict,), "a mapping", default)

    def inner(self, key: str) -> _Fields:
        return _Fields(self.mapping(key), f"{self.where}{key}.")
