"""`trainer.precision=auto`: bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere.

Read before torch loads (no torch import here). On a CPU with AVX512-BF16 or AMX, bf16 matmuls run
two to three times as fast as fp32 ones (bench/throughput.py measures both peaks); without them torch
emulates bf16, so fp32 is kept.
"""

from __future__ import annotations

import functools
from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names for native bf16 arithmetic


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on a Linux CPU that lists AVX512-BF16 or AMX-BF16; False elsewhere (and where it cannot tell)."""
    try:
        return lists_native_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def lists_native_bf16(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text lists a native bf16 instruction set in its first `flags` line."""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def auto_precision(accelerator: str) -> str:
    """What `auto` means on this machine: bf16 autocast on GPUs and bf16-capable CPUs, fp32 elsewhere.
    `trainer.accelerator=auto` is judged by the CPU (whether a GPU is there is known only once torch loads)."""
    if accelerator in ("gpu", "cuda"):
        return "bf16-mixed"
    if accelerator == "cpu" and cpu_has_native_bf16():
        return "bf16-mixed"
    return "32-true"
