"""Dropout with a faster mask on CPU.

torch draws a CPU dropout mask with `bernoulli_`, one Mersenne-Twister call per element, serial
(its vectorised MKL path is taken on Intel CPUs only). A LoRA step on MiniLM runs 56 dropouts, and on
this project's AMD CPU they took a third of the step. Here an element is kept when a 16-bit random
number is at or above round(p * 65536), so p is exact to 1/65536 and the kept values are scaled by
the exact inverse of the keep rate (the output's expectation is the input). The numbers come from
Philox4x32-10, the counter-based generator torch's CUDA dropout uses, in peftlab's C kernel
(peftlab.nn.native: vectorised, the mask written straight in its dtype), keyed by a 64-bit seed
drawn from torch's CPU generator for each mask; where the kernel cannot be built, from 64-bit
words of torch's own generator cut into four 16-bit numbers. The masks differ from torch's; their
distribution does not. The same seed gives the same masks, and a resumed run, which restores
torch's generator, the same stream. On other devices torch's fused dropout is used as it is.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from peftlab.nn.native import keep_mask_library

LEVELS = 1 << 16  # a random 16-bit number per element
# TrainStats.dropout_masks: what a run's dropout masks are drawn with.
PHILOX = "philox4x32-10"  # peftlab's kernel
TORCH_WORDS = "torch-mt19937"  # the same 16-bit numbers from torch's generator, where the kernel is not built
TORCH = "torch"  # torch's own dropout (trainer.fast_dropout=false, or not on CPU)


def mask_generator() -> str:
    """What the fast CPU masks are drawn with here (building the kernel on first call)."""
    return PHILOX if keep_mask_library() is not None else TORCH_WORDS


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device,
              fast: bool = True, scaled: bool = False) -> tuple[torch.Tensor, float]:  # fmt: skip
    """1 where a dropout keeps an element and 0 where it drops it, in `dtype`; and 1 / the rate at which
    it keeps (0 when it keeps none). fast: from 16-bit numbers on CPU, as above; elsewhere, and with
    fast=False, torch's bernoulli_. scaled: the kept elements hold 1 / the rate instead of 1, rounded
    to `dtype` as `mask.mul_(rate)` would round it."""
    if not (fast and torch.device(device).type == "cpu"):
        keep = torch.empty(shape, dtype=dtype, device=device).bernoulli_(1 - p)
        inverse_rate = 1 / (1 - p) if p < 1 else 0.0
        return keep.mul_(inverse_rate) if scaled else keep, inverse_rate
    cut = round(p * LEVELS)
    if cut >= LEVELS:  # nothing kept (and the threshold would not fit the 16-bit numbers)
        return torch.zeros(shape, dtype=dtype), 0.0
    inverse_rate = LEVELS / (LEVELS - cut)
    library = keep_mask_library()
    if library is not None and not dtype.is_complex:
        keep = torch.empty(shape, dtype=dtype)
        seed = torch.empty((), dtype=torch.int64).random_(-(1 << 63), None).item()  # from torch's generator
        kernel = getattr(library, f"keep_mask_{8 * keep.element_size()}")
        kernel(keep.data_ptr(), keep.numel(), cut, _bits(inverse_rate if scaled else 1, dtype), seed & 0xFFFF_FFFF_FFFF_FFFF)
        return keep, inverse_rate
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)  # full 64 bits, from torch's generator
    numbers = words.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    # Compared straight into `dtype`: 6x faster than a bool mask cast afterwards.
    keep = torch.ge(numbers, cut - LEVELS // 2, out=torch.empty(shape, dtype=dtype))
    return keep.mul_(inverse_rate) if scaled else keep, inverse_rate


_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@functools.lru_cache(maxsize=64)  # a few (value, dtype) pairs a run; a new tensor per mask cost 1.3 ms a step
def _bits(value: float, dtype: torch.dtype) -> int:
    """`value`'s bit pattern in `dtype`, as an unsigned integer of its width; rounded through the type
    torch computes `dtype` in (float32 for the 16-bit floats), as `torch.ones(..., dtype).mul_(value)`."""
    if dtype.is_floating_point:
        number = torch.tensor(value, dtype=torch.float64 if dtype == torch.float64 else torch.float32).to(dtype)
    else:
        number = torch.tensor(value).to(dtype)
    return number.view(_INT_OF_WIDTH[number.element_size()]).item() & ((1 << (8 * number.element_size())) - 1)


class FastDropout(nn.Dropout):
    """`nn.Dropout`, with the mask above when training on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        keep, _ = keep_mask(x.shape, self.p, x.dtype, x.device, scaled=True)
        # A mask in x's dtype, holding 0 or the scale (for bf16 the scale rounds to bf16, as in
        # torch's own CPU dropout): one multiply forward and one backward, faster than torch.where
        # or a bool mask.
        return x * keep


def use_fast_dropout(model: nn.Module) -> None:
    """Swap every `nn.Dropout` of the model (its own and the method's, like LoRA's) for
    `FastDropout` with the same p."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:  # subclasses may do more than drop out
                fast = FastDropout(child.p)
                fast.train(child.training)
                setattr(module, name, fast)
