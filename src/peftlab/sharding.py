"""Strategies that shard the model across GPUs (FSDP, DeepSpeed ZeRO), and saving from them.

Sharded, each rank holds a slice of every parameter, so the adapter read on rank 0 would be a
slice, not the adapter. Before saving, the full state is gathered to rank 0 (every rank takes
part), and the method writes its weights from that state instead of from the model.
`trainer=fsdp` wraps each transformer block (every transformers 5 layer is a
`GradientCheckpointingLayer`) as its own FSDP unit, so only one block's weights are whole at a time.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Optional

FSDP_STRATEGIES = ("fsdp", "fsdp_cpu_offload")
DEEPSPEED_STRATEGIES = ("deepspeed", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_2_offload",
                        "deepspeed_stage_3", "deepspeed_stage_3_offload", "deepspeed_stage_3_offload_nvme")  # fmt: skip
FSDP_PREFIX = "_fsdp_wrapped_module."  # what FSDP adds to the names of the modules it wraps


def check_strategy(strategy: str, accelerator: str) -> None:
    """Light checks, before torch loads: these strategies shard over CUDA GPUs, DeepSpeed's need its package."""
    from peftlab.errors import ConfigError

    sharded = strategy in FSDP_STRATEGIES or strategy in DEEPSPEED_STRATEGIES
    if sharded and strategy in DEEPSPEED_STRATEGIES and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"trainer.strategy={strategy} needs the deepspeed package, which is not installed: pip install deepspeed "
                          "(on a CUDA machine); allowed without it: fsdp, ddp, auto")  # fmt: skip
    if sharded and accelerator not in ("gpu", "cuda"):
        raise ConfigError(f"trainer.strategy={strategy} shards the model over CUDA GPUs, and Lightning runs it on nothing else; "
                          f"trainer.accelerator is {accelerator}; allowed on CPU: trainer.strategy=ddp or auto")  # fmt: skip


def build_strategy(strategy: str) -> Any:
    """The Lightning strategy object for a name; FSDP with one unit per transformer block."""
    if strategy not in FSDP_STRATEGIES:
        return strategy  # Lightning's own names, as they are
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.modeling_layers import GradientCheckpointingLayer

    return FSDPStrategy(
        auto_wrap_policy={GradientCheckpointingLayer},
        state_dict_type="full",  # checkpoints and the saved adapter are gathered whole on rank 0
        cpu_offload=strategy == "fsdp_cpu_offload",
    )


def is_zero3(strategy: Any) -> bool:
    return type(strategy).__name__ == "DeepSpeedStrategy" and getattr(strategy, "zero_stage_3", False)


def is_sharded(strategy: Any) -> bool:
    return type(strategy).__name__ == "FSDPStrategy" or is_zero3(strategy)


def gathered_state(trainer, model) -> Optional[dict[str, Any]]:
    """The model's full state dict on rank 0 of a sharded run (call it on every rank); None when
    the model on rank 0 is whole already (one process, DDP, ZeRO-1/2), so the method reads it."""
    strategy = trainer.strategy
    if not is_sharded(strategy):
        return None
    if is_zero3(strategy):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if trainer.is_global_zero else {}
        return state
    full = strategy.lightning_module_state_dict()  # FSDP: gathered to rank 0, offloaded to CPU
    return {unwrapped_name(k).removeprefix("model."): v for k, v in full.items()}


def unwrapped_name(name: str) -> str:
    """A parameter's name as a gathered state dict spells it (without FSDP's wrapper prefixes)."""
    return name.replace(FSDP_PREFIX, "")


def trainable_names(model) -> set[str]:
    return {unwrapped_name(n) for n, p in model.named_parameters() if p.requires_grad}
