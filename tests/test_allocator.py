"""peftlab.allocator: freed blocks stay in the process, so the next step's buffers fault in no pages."""

from __future__ import annotations

import ctypes
import platform
import resource
import subprocess
import sys

import pytest

from peftlab.allocator import keep_freed_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# Allocate, touch every page, free and do it again: the second round's page faults.
ROUNDS = """
import ctypes, resource, sys
sys.path[:0] = {path!r}
if {keep}:
    from peftlab.allocator import keep_freed_memory
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 40 << 20  # over glibc's largest mmap threshold (32 MiB)
faults = []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(block)
print(faults[1])
"""


def second_round_faults(keep: bool) -> int:
    code = ROUNDS.format(path=sys.path, keep=keep)
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@glibc
def test_a_freed_block_is_reused_without_faulting_its_pages_in_again():
    pages = (40 << 20) // resource.getpagesize()
    assert second_round_faults(keep=False) > pages // 2  # glibc's default: unmapped on free, faulted in again
    assert second_round_faults(keep=True) < pages // 20  # kept: the same pages serve the next block


def test_keep_freed_memory_says_whether_it_could():
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
    assert keep_freed_memory() is keep_freed_memory()  # once per process
