"""Backbones: a pretrained model by hub id or folder, or a tiny random one built from a config class."""

from __future__ import annotations

import functools

from peftlab import gguf_cache
from peftlab.architectures import Profile, family_of
from peftlab.config import ModelConfig
from peftlab.errors import ConfigError, ModelError, first_line
from peftlab.tasks import Task


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    key = "model.name_or_path" if cfg.tokenizer == cfg.name_or_path else "model.tokenizer"
    source = gguf_cache.tokenizer_folder(cfg.tokenizer) if gguf_cache.is_gguf(cfg.tokenizer) else cfg.tokenizer
    tokenizer = _from_pretrained(AutoTokenizer, key, source)
    if tokenizer.pad_token is None:  # GPT-2 and LLaMA tokenizers have none; batches need one
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_config(cfg: ModelConfig, task: Task):
    """The model's transformers config, before any weights: its family picks the head class."""
    import transformers

    if cfg.random_init is not None:
        kwargs = dict(cfg.random_init)
        config_class = getattr(transformers, kwargs.pop("config_class"), None)
        if config_class is None:
            raise ModelError(f"model.random_init.config_class={cfg.random_init['config_class']!r} is not in transformers")
        task_kwargs = task.model_kwargs()  # outside the try: what the task's data refuses is not the config's fault
        try:  # the config class's own checks (heads vs width, field types, ...)
            return config_class(**kwargs, **task_kwargs)
        except Exception as err:  # noqa: BLE001 -- any refusal of these settings is the user's to fix
            raise ModelError(f"model.random_init: {config_class.__name__} refuses these settings: {first_line(err)}") from None
    return _from_pretrained(transformers.AutoConfig, "model.name_or_path", weights_folder(cfg), **task.model_kwargs())


def tell_task_the_model(cfg: ModelConfig, task: Task, config=None) -> str:
    """`task.for_model` from the model's config alone, so the task can encode (and refuse a model
    it cannot train) before any weights load; returns the model's family."""
    config = config or load_config(cfg, task)
    family = family_of(config, cfg.targets)
    task.for_model(family, config.model_type)
    return family


def weights_folder(cfg: ModelConfig) -> str:
    """What from_pretrained reads: the hub id or folder, or the cached conversion of a GGUF file."""
    return gguf_cache.model_folder(cfg.name_or_path) if gguf_cache.is_gguf(cfg.name_or_path) else cfg.name_or_path


def load_model(cfg: ModelConfig, task: Task, **options):
    import torch
    import transformers

    config = load_config(cfg, task)
    family = tell_task_the_model(cfg, task, config)
    auto_class = getattr(transformers, task.auto_model_class_for(family))
    if cfg.random_init is not None:
        # Fixed weights, whatever the run's seed: a random model stands in for a pretrained one,
        # so a saved adapter must reload onto the very same base.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            try:  # the model's own checks of its config (heads vs width, ...)
                return auto_class.from_config(config)
            except Exception as err:  # noqa: BLE001 -- any refusal of these settings is the user's to fix
                raise ModelError(f"model.random_init: {type(config).__name__} refuses these settings: {first_line(err)}") from None
    return _from_pretrained(auto_class, "model.name_or_path", weights_folder(cfg), config=config, **options)  # options: the method's (4-bit loading)


def model_source(cfg: ModelConfig) -> str:
    """Where the weights come from, for the run record: a hub id or folder, or the config class a
    random test model is built from."""
    if cfg.random_init is not None:
        return f"random {cfg.random_init['config_class']}"
    return str(cfg.name_or_path)


def _from_pretrained(auto_class, key: str, name_or_path: str, **kwargs):
    """transformers' real loading code (hub or folder), with a one-line error when it cannot."""
    from pathlib import Path

    local = Path(name_or_path).expanduser().is_dir()
    unreachable = None if local else hub_unreachable()
    if unreachable:  # the cache only: without it, each file is retried for ~25 s, with a warning per try
        kwargs = {**kwargs, "local_files_only": True}
    try:
        return auto_class.from_pretrained(name_or_path, **kwargs)
    except ValueError as err:  # e.g. a vision model where a text head is asked for
        raise ModelError(f"{key}={name_or_path!r} has no {auto_class.__name__} ({first_line(err)})") from None
    except OSError as err:
        if local:
            raise ModelError(f"{key}={name_or_path!r}: the folder could not be loaded ({first_line(err)})") from None
        if unreachable:
            raise ModelError(
                f"{key}={name_or_path!r} could not be loaded: not a local folder, not in the Hugging Face cache, "
                f"and the Hub cannot be reached ({unreachable}); allowed: a local folder, or a hub id already cached"
            ) from None
        raise ModelError(
            f"{key}={name_or_path!r} could not be loaded: not a local folder, and neither the Hugging Face Hub "
            f"nor its local cache has it ({first_line(err)})"
        ) from None


@functools.lru_cache(maxsize=1)
def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached from here (its host name does not resolve), or
    None when it may be (or HF_HUB_OFFLINE already keeps transformers to the cache)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as err:
        return f"{host}: {err.strerror or err}"
    return None


def check_model_fits(model, tokenizer, task: Task, profile: Profile, virtual_tokens: int = 0) -> None:
    """Token ids or lengths the model has no embeddings for, or inputs its head cannot read, fail deep
    in its forward pass."""
    if profile.classifies_at_eos and type(model).__name__.endswith("ForSequenceClassification"):
        check_inputs_end_with_eos(model, tokenizer)
    position_offset = profile.position_offset
    vocab = model.get_input_embeddings().num_embeddings
    if vocab < len(tokenizer):
        raise ConfigError(
            f"the model has embeddings for {vocab} tokens, but its tokenizer has {len(tokenizer)}; "
            "allowed: a tokenizer of the model's own vocabulary (model.tokenizer), or a larger vocab_size"
        )
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    needed, max_length = task.positions_needed(), task.cfg.max_length
    limit = positions - position_offset - virtual_tokens if isinstance(positions, int) else None  # prompt tuning's tokens take positions too
    if limit is not None and needed > limit:
        what = f"task.max_length={max_length}" if needed == max_length else f"task.max_length + task.max_new_tokens={needed}"
        if virtual_tokens and limit < 8:  # no input fits beside the virtual tokens: they are what to change
            free = positions - position_offset
            most, beside = (free - needed, what) if needed < free else (free - 8, "task.max_length=8")
            raise ConfigError(
                f"peft.options.num_virtual_tokens={virtual_tokens} is out of range for this {model.config.model_type} model; "
                f"allowed: 1 to {most} beside {beside} (its {free} positions hold the virtual tokens and the input)"
            )
        room = f"its number of positions less the method's {virtual_tokens} virtual tokens" if virtual_tokens else "its number of positions"
        raise ConfigError(
            f"{what} is out of range for this {model.config.model_type} model; "
            f"allowed: 8 to {limit}, {room}"
        )


def check_inputs_end_with_eos(model, tokenizer) -> None:
    """T5's classification head scores each input at its last eos, found in input_ids, and
    transformers raises mid-batch when rows hold different numbers of them."""
    eos, pad = model.config.eos_token_id, tokenizer.pad_token_id
    ends = tokenizer("a short sentence")["input_ids"][-1:]
    head = f"this {model.config.model_type} {type(model).__name__} scores each input at its last eos token (id {eos})"
    if ends != [eos]:
        problem = "but its tokenizer does not end inputs with it"
    elif pad == eos:
        problem = "but its tokenizer pads with that same id, so padded rows hold more of them"
    else:
        return
    raise ConfigError(f"{head}, {problem}; allowed: the model's own tokenizer (model.tokenizer), or a generation task (task=multi30k)")


def count_parameters(model) -> dict[str, float]:
    """Exact trainable and total counts of the model as it runs. peft keeps a frozen copy of each
    `modules_to_save` module (`original_module`) that the forward pass never uses: it is not counted."""
    seen, trainable, total = set(), 0, 0
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen or ".original_module." in name:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return {"trainable": trainable, "total": total, "trainable_percent": 100.0 * trainable / total}
