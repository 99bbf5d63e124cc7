"""The fast paths of training (bf16 autocast, the CPU dropout mask, fused AdamW, the deferred loss
check) against the plain ones: the same metrics, within a stated tolerance where the arithmetic
differs. Their speed is measured by bench/throughput.py, never here."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, compose, train_tiny
from lightning.pytorch.callbacks import Callback

from peftlab.methods import base as methods_base
from peftlab.module import LossWatch
from peftlab.nn.dropout import LEVELS, FastDropout, keep_mask
from peftlab.nn.fused_lora import FusedLoraLinear
from peftlab.precision import auto_precision, cpu_has_native_bf16, lists_native_bf16

P = 0.1
CUT = round(P * LEVELS)  # 6554: p is 6554 / 65536 = 0.100006
SCALE = LEVELS / (LEVELS - CUT)


def test_keep_mask_keeps_the_rate_and_gives_its_exact_inverse():
    torch.manual_seed(0)
    keep, inverse_rate = keep_mask(torch.Size([1000, 1000]), P, torch.bfloat16, torch.device("cpu"))
    assert keep.dtype == torch.bfloat16 and set(keep.unique().tolist()) == {0.0, 1.0}
    assert inverse_rate == SCALE  # 1 / (1 - 6554 / 65536), not 1 / 0.9
    assert abs(keep.float().mean().item() - (1 - CUT / LEVELS)) < 0.002  # 6.7 sigma for a million draws
    # The rows are not copies of one another (each element has its own 16 bits).
    assert not torch.equal(keep[0], keep[1])


def test_keep_mask_comes_from_torchs_generator():
    cpu = torch.device("cpu")
    torch.manual_seed(7)
    first, _ = keep_mask(torch.Size([257, 3]), P, torch.float32, cpu)  # an odd size: the last 64-bit word is cut
    torch.manual_seed(7)
    again, _ = keep_mask(torch.Size([257, 3]), P, torch.float32, cpu)
    other, _ = keep_mask(torch.Size([257, 3]), P, torch.float32, cpu)
    assert torch.equal(first, again) and not torch.equal(first, other)
    none_kept, inverse_rate = keep_mask(torch.Size([4, 5]), 1.0, torch.float32, cpu)
    assert not none_kept.any() and inverse_rate == 0.0


def test_a_scaled_keep_mask_holds_the_scale_rounded_as_mul_would():
    cpu = torch.device("cpu")
    for dtype, fast in ((torch.bfloat16, True), (torch.float32, True), (torch.float64, True), (torch.bfloat16, False)):
        torch.manual_seed(5)
        plain, inverse_rate = keep_mask(torch.Size([300]), P, dtype, cpu, fast=fast)
        torch.manual_seed(5)
        scaled, _ = keep_mask(torch.Size([300]), P, dtype, cpu, fast=fast, scaled=True)
        assert torch.equal(scaled, plain.clone().mul_(inverse_rate)), dtype  # the same draws, scaled as mul_ scales
    assert scaled.max().item() == 1.109375  # bf16's rounding of 1 / 0.9


def test_fast_dropout_module_trains_like_dropout_and_is_the_identity_in_eval():
    x = torch.ones(64, 384, requires_grad=True)
    drop = FastDropout(P)
    y = drop(x)
    assert torch.equal(y.detach().unique(), torch.tensor([0.0, SCALE]))
    assert abs(y.detach().mean().item() - 1) < 0.01  # the output's expectation is the input (4 sigma here)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient flows through the kept elements, scaled alike
    assert torch.equal(drop.eval()(x), x) and torch.equal(FastDropout(0.0).train()(x), x)


def test_fast_dropout_rounds_the_scale_of_bf16_inputs_as_torch_does():
    x = torch.randn(64, 384).to(torch.bfloat16)
    torch.manual_seed(1)
    y = FastDropout(P)(x)
    torch.manual_seed(1)
    keep, _ = keep_mask(x.shape, P, torch.bool, x.device)
    bf16_scale = torch.tensor(SCALE).to(torch.bfloat16)  # 1.109375: what torch's CPU dropout scales bf16 by for p=0.1
    assert y.dtype == torch.bfloat16 and torch.equal(y, x * torch.where(keep, bf16_scale, 0.0))
    assert torch.nn.functional.dropout(torch.ones(100, dtype=torch.bfloat16), P).max() == torch.tensor(1 / (1 - P)).to(torch.bfloat16)


@pytest.fixture(scope="module")
def plain_and_fast(tmp_path_factory, sst2_available):
    """The same tiny LoRA run: plain (fp32, torch's dropout, peft's forward) and with the fast paths."""
    runs = {}
    plain = ["peft=lora", "trainer.precision=32-true", "trainer.fast_dropout=false", "trainer.fused_lora=false"]
    for name, overrides in {
        "plain": plain,
        "bf16": ["peft=lora", "trainer.precision=bf16-mixed", "trainer.fast_dropout=false", "trainer.fused_lora=false"],
        "fast_dropout": ["peft=lora", "trainer.precision=32-true", "trainer.fast_dropout=true", "trainer.fused_lora=false"],
        "fused_lora": ["peft=lora", "trainer.precision=32-true", "trainer.fast_dropout=true", "trainer.fused_lora=true"],
        "fused_lora_bf16": ["peft=lora", "trainer.precision=bf16-mixed", "trainer.fast_dropout=true", "trainer.fused_lora=true"],
    }.items():
        runs[name] = train_tiny(tmp_path_factory.mktemp(name), *overrides)
    with pytest.MonkeyPatch.context() as patch:  # the same run with torch's for-each AdamW instead of the fused one
        patch.setattr(methods_base, "fused_adamw", lambda params: False)
        runs["foreach"] = train_tiny(tmp_path_factory.mktemp("foreach"), *plain)
    return runs


def test_fused_adamw_gives_the_for_each_runs_metrics(plain_and_fast):
    fused, foreach = plain_and_fast["plain"].record.eval.values, plain_and_fast["foreach"].record.eval.values
    assert fused.keys() == foreach.keys()
    for key in fused:  # the same arithmetic in another order: equal to float32 rounding
        assert fused[key] == pytest.approx(foreach[key], abs=1e-5), key


def test_bf16_autocast_stays_within_a_stated_tolerance_of_fp32(plain_and_fast):
    fp32, bf16 = plain_and_fast["plain"].record, plain_and_fast["bf16"].record
    assert bf16.train.precision == "bf16-mixed" and fp32.train.precision == "32-true"
    # Tolerance: 0.02 on the validation loss (about 0.69 here), one example of the 32 in accuracy.
    assert abs(bf16.eval.values["loss"] - fp32.eval.values["loss"]) < 0.02
    assert abs(bf16.eval.values["accuracy"] - fp32.eval.values["accuracy"]) <= 1 / 32 + 1e-9


def test_fast_dropout_replaces_every_dropout_and_keeps_p(plain_and_fast):
    def dropouts(model, kind):
        return sorted((name, m.p) for name, m in model.named_modules() if type(m) is kind)

    plain, fast = plain_and_fast["plain"].model, plain_and_fast["fast_dropout"].model
    assert dropouts(fast, torch.nn.Dropout) == [] and dropouts(plain, FastDropout) == []
    swapped = dropouts(fast, FastDropout)
    assert swapped == dropouts(plain, torch.nn.Dropout)
    assert sum(".lora_dropout." in name for name, _ in swapped) == 12  # LoRA's own: 6 Linear layers (query ... output) x 2 blocks
    assert {p for _, p in swapped} == {0.1}
    record = plain_and_fast["fast_dropout"].record
    assert math.isfinite(record.eval.values["loss"]) and record.train.samples == 64


def test_fused_lora_gives_the_unfused_runs_metrics(plain_and_fast):
    fused, unfused = plain_and_fast["fused_lora"], plain_and_fast["fast_dropout"]
    layers = [m for m in fused.model.modules() if type(m) is FusedLoraLinear]
    assert len(layers) == 12 and not any(type(m) is FusedLoraLinear for m in unfused.model.modules())
    assert fused.record.eval.values.keys() == unfused.record.eval.values.keys()
    for key, value in unfused.record.eval.values.items():  # the same masks, the same function: float rounding
        assert fused.record.eval.values[key] == pytest.approx(value, abs=1e-5), key
    # bf16: within the tolerance bf16 itself is held to against fp32 (the test above).
    bf16 = plain_and_fast["fused_lora_bf16"].record.eval.values
    assert abs(bf16["loss"] - unfused.record.eval.values["loss"]) < 0.02
    assert abs(bf16["accuracy"] - unfused.record.eval.values["accuracy"]) <= 1 / 32 + 1e-9


def test_sharded_strategies_run_pefts_forward():
    from peftlab.config import validate

    assert validate(compose(*TINY)).trainer.fused_lora is True
    assert validate(compose(*TINY, "trainer=fsdp")).trainer.fused_lora is False  # FSDP gathers weights in module hooks


def test_loss_watch_keeps_the_first_non_finite_step_without_reading_each_one():
    watch = LossWatch()
    assert watch.first_bad() is None
    for step, loss in enumerate([0.7, 0.6, float("nan"), float("inf"), 0.5], start=1):
        watch.update(torch.tensor(loss), step)
    step, loss = watch.first_bad()
    assert step == 3 and math.isnan(loss)


class GradientNorms(Callback):
    """The gradient norm the optimizer stepped with (gradients are zeroed only when the next step starts)."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.fused: set[bool] = set()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.fused |= {bool(o.defaults["fused"]) for o in trainer.optimizers}
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_gradients_are_clipped_with_the_fused_optimizer(tmp_path, sst2_available, precision):
    from peftlab.config import validate
    from peftlab.recipe import train

    norms = GradientNorms()
    raw = compose(*TINY, "peft=full", f"trainer.precision={precision}", "trainer.gradient_clip_val=1e-3")
    run = train(validate(raw), raw, tmp_path, callbacks=[norms])
    assert norms.fused == {True} and len(norms.norms) == run.record.train.steps == 8
    assert all(0 < n <= 1e-3 * (1 + 1e-4) for n in norms.norms), norms.norms


@pytest.mark.parametrize("max_norm", [0.5, 100.0])  # clipped, and a norm already under the limit
def test_clipping_inside_the_fused_step_gives_clip_grad_norms_update(max_norm):
    from peftlab.module import clip_in_the_step, divides_gradients

    torch.manual_seed(0)
    start = [torch.randn(300, 7), torch.randn(11)]
    grads = [torch.randn(300, 7), torch.randn(11) * 5]
    runs = []
    for in_step in (False, True):
        params = [torch.nn.Parameter(w.clone()) for w in start]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer = torch.optim.AdamW(params, lr=0.1, fused=True)
        assert divides_gradients(optimizer)
        if in_step:
            clip_in_the_step(optimizer, max_norm)
        else:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        runs.append(params)
    for plain, fused in zip(*runs):
        torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(fused.grad, plain.grad, rtol=1e-6, atol=1e-7)  # the clipped gradient is left
    clipped_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in runs[1]])).item()
    assert clipped_norm == pytest.approx(min(max_norm, torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()), rel=1e-5)
    assert not divides_gradients(torch.optim.AdamW(runs[0], lr=0.1))  # for-each AdamW: Lightning's clipping


def test_precision_auto_is_bf16_where_the_cpu_computes_it():
    flags = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {}\n"
    assert lists_native_bf16(flags.format("avx512_bf16")) and lists_native_bf16(flags.format("amx_bf16 amx_tile"))
    assert not lists_native_bf16(flags.format("avx512vl")) and not lists_native_bf16("no flags here")
    assert auto_precision("gpu") == "bf16-mixed"
    assert auto_precision("cpu") == ("bf16-mixed" if cpu_has_native_bf16() else "32-true")
    from peftlab.config import validate

    assert validate(compose(*TINY, "trainer.precision=auto")).trainer.precision == auto_precision("cpu")


def test_deterministic_trainers_do_not_fill_new_tensors_with_nan(tmp_path):
    from peftlab.config import validate
    from peftlab.recipe import build_trainer

    raw = compose(*TINY, "trainer.deterministic=true", "logger=csv")
    torch.utils.deterministic.fill_uninitialized_memory = True  # torch's default
    build_trainer(validate(raw), tmp_path, {}, [])
    assert torch.are_deterministic_algorithms_enabled()  # Lightning switched them on ...
    assert torch.utils.deterministic.fill_uninitialized_memory is False  # ... without the NaN fill of every new tensor
