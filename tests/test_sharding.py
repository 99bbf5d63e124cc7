"""Sharded strategies (FSDP, DeepSpeed ZeRO): what runs without a GPU. Lightning runs FSDP only on
CUDA, so these check the parts that do not need one: the preset's wrapping policy, the one-line
refusals, and that a method saves its weights from a gathered state dict (what rank 0 holds after
FSDP's full-state gather) rather than from the model, whose parameters on rank 0 are a shard."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import train_tiny

BATCH = {"input_ids": torch.tensor([[101, 2023, 3185, 2001, 2307, 102]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}


@pytest.mark.parametrize("method", ["lora", "vera", "ia3", "bitfit", "adapter", "full"])
def test_weights_are_saved_from_the_gathered_state_not_the_model(tmp_path, sst2_available, method):
    from peftlab.methods import METHODS
    from peftlab.outputs import WEIGHTS_DIR
    from peftlab.reload import load_run, load_run_config

    run = train_tiny(tmp_path / "run", f"peft={method}", "trainer.max_steps=2")
    model = run.model.eval()
    with torch.no_grad():
        expected = model(**BATCH).logits
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # as the gather leaves it on rank 0
    with torch.no_grad():  # rank 0's own parameters are not the trained ones (a shard, in a sharded run)
        for p in model.parameters():
            if p.requires_grad:
                p.zero_()
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy)
    shutil.rmtree(copy / WEIGHTS_DIR)
    cfg = load_run_config(tmp_path / "run")
    METHODS.get(cfg.peft.method, "peft.method")(cfg.peft).save(model, copy / WEIGHTS_DIR, state)
    _, _, reloaded = load_run(copy)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**BATCH).logits, expected, rtol=0, atol=0)


def test_fsdp_preset_wraps_each_transformer_block():
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    from peftlab.sharding import build_strategy

    strategy = build_strategy("fsdp")
    assert isinstance(strategy, FSDPStrategy) and strategy.kwargs["use_orig_params"] is True
    policy = strategy.kwargs["auto_wrap_policy"]
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37))
    llama = LlamaModel(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=100))
    for model, block in ((bert, "BertLayer"), (llama, "LlamaDecoderLayer")):
        wrapped = {type(m).__name__ for m in model.modules() if policy._module_classes and isinstance(m, tuple(policy._module_classes))}
        assert wrapped == {block}
    assert build_strategy("ddp") == "ddp"  # Lightning's other names go through as they are
