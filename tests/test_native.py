"""peftlab's C kernel for dropout masks (peftlab.nn.native, csrc/keep_mask.c): Philox4x32-10 against
its published test vectors and an independent Python implementation, the mask layout, the build
cache, and the fallback to torch's generator where it cannot be built."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from peftlab.nn import dropout, native
from peftlab.nn.dropout import LEVELS, keep_mask

needs_cc = pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler here")
M0, M1, W0, W1, LO = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85, 0xFFFFFFFF


def philox(counter: tuple[int, ...], key: tuple[int, int]) -> list[int]:
    """Philox4x32-10 in plain Python, written from the paper, for the kernel to be checked against."""
    c, (k0, k1) = list(counter), key
    for _ in range(10):
        p0, p1 = M0 * c[0], M1 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & LO, (p0 >> 32) ^ c[3] ^ k1, p0 & LO]
        k0, k1 = (k0 + W0) & LO, (k1 + W1) & LO
    return c


def expected_mask(n: int, cut: int, seed: int) -> list[bool]:
    """The layout csrc/keep_mask.c documents: element e takes 16-bit number (e % 64) // 8 of block 8 (e // 64) + e % 8."""
    key = (seed & LO, seed >> 32)
    kept = []
    for e in range(n):
        words = philox((8 * (e // 64) + e % 8, 0, 0, 0), key)
        number = (e % 64) // 8
        kept.append(((words[number // 2] >> (16 * (number % 2))) & 0xFFFF) >= cut)
    return kept


@pytest.fixture
def library():
    lib = native.keep_mask_library()
    assert lib is not None, "the kernel should build wherever there is a C compiler"
    return lib


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """An empty kernel cache and a forgotten library, restored afterwards."""
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    native.keep_mask_library.cache_clear()
    yield tmp_path / "cache" / "native"
    native.keep_mask_library.cache_clear()


@needs_cc
def test_philox_gives_random123s_known_answers(library):
    for counter, key, words in native.KNOWN_ANSWERS:
        assert native.philox_block(library, counter, key) == words
        assert tuple(philox(counter, key)) == words  # the Python reference below is right too


@needs_cc
@pytest.mark.parametrize("n", [1, 63, 64, 257, 1000])
def test_masks_follow_the_documented_layout_for_every_width(library, n):
    seed, cut = 0xDEADBEEF12345678, round(0.1 * LEVELS)
    expected = torch.tensor(expected_mask(n, cut, seed))
    for dtype in (torch.bool, torch.bfloat16, torch.float16, torch.float32, torch.float64):
        out = torch.full((n,), 7, dtype=dtype)  # the kernel must write every element
        getattr(library, f"keep_mask_{8 * out.element_size()}")(out.data_ptr(), n, cut, dropout._bits(1, dtype), seed)
        assert torch.equal(out, expected.to(dtype)), dtype


@needs_cc
def test_a_large_mask_is_the_same_with_any_number_of_threads(library):
    n, cut, seed = 100_003, round(0.1 * LEVELS), 0x0F1E2D3C4B5A6978  # over the kernel's parallel size, and a cut-off tail
    threads = torch.get_num_threads()
    masks = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            out = torch.empty(n, dtype=torch.bfloat16)
            library.keep_mask_16(out.data_ptr(), n, cut, dropout._bits(1, torch.bfloat16), seed)
            masks.append(out)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])
    for start in (0, n // 3 - 300, n // 2 - 300, n - 600):  # around where two or three threads split it
        expected = [kept for e, kept in enumerate(expected_mask(start + 600, cut, seed)) if e >= start]
        assert masks[0][start : start + 600].bool().tolist() == expected


@needs_cc
def test_the_kernel_shares_torchs_openmp_runtime(library):
    if not native._torch_runs_libgomp():
        pytest.skip("torch does not run on GNU OpenMP here")
    # The kernel needs libgomp.so.1, and the one mapped is torch's, not a second thread pool from the
    # system's copy (other libraries, scikit-learn's among them, bring their own under other names).
    maps = open("/proc/self/maps").read().splitlines()
    mapped = {line.split()[-1] for line in maps if line.rsplit("/", 1)[-1] == "libgomp.so.1"}
    assert mapped == {str(Path(torch.__file__).parent / "lib" / "libgomp.so.1")}, mapped


@needs_cc
def test_keep_mask_draws_each_masks_key_from_torchs_generator(library):
    shape = torch.Size([40, 50])
    torch.manual_seed(3)
    first, inverse_rate = keep_mask(shape, 0.1, torch.float32, torch.device("cpu"))
    torch.manual_seed(3)
    seed = torch.empty((), dtype=torch.int64).random_(-(1 << 63), None).item() & 0xFFFF_FFFF_FFFF_FFFF
    assert torch.equal(first.flatten(), torch.tensor(expected_mask(2000, round(0.1 * LEVELS), seed), dtype=torch.float32))
    assert inverse_rate == LEVELS / (LEVELS - 6554)
    again, _ = keep_mask(shape, 0.1, torch.float32, torch.device("cpu"))  # the generator moved on: a new key
    assert not torch.equal(first, again)


@needs_cc
def test_masks_keep_at_the_rate_asked_and_do_not_repeat(library):
    torch.manual_seed(0)
    for p in (0.05, 0.1, 0.5):
        keep, _ = keep_mask(torch.Size([4096, 256]), p, torch.bfloat16, torch.device("cpu"))
        rate = 1 - round(p * LEVELS) / LEVELS
        sigma = (rate * (1 - rate) / keep.numel()) ** 0.5
        assert abs(keep.float().mean().item() - rate) < 5 * sigma
        # Neighbouring 256-element passes and the lanes of one pass are not copies of each other.
        rows = keep.view(-1, 256)
        assert not torch.equal(rows[0], rows[1]) and not torch.equal(rows[0, :64], rows[0, 64:128])
        # Consecutive elements are uncorrelated: P(both kept) is rate^2.
        pairs = (keep[:, :-1] * keep[:, 1:]).float().mean().item()
        assert abs(pairs - rate**2) < 5 * (rate**2 * (1 - rate**2) / keep.numel()) ** 0.5


@needs_cc
def test_the_build_is_cached_and_reused(fresh_kernel, monkeypatch):
    assert native.keep_mask_library() is not None
    (built,) = fresh_kernel.glob("keep_mask-*.so")  # one library, no temporary left behind
    assert list(fresh_kernel.iterdir()) == [built]
    calls = []
    real_run = native._run
    monkeypatch.setattr(native, "_run", lambda command: calls.append(command) or real_run(command))
    assert native.build() == built
    assert all("--version" in c for c in calls)  # asked the compiler's version, compiled nothing


def test_no_compiler_falls_back_to_torchs_generator_with_one_warning(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    with pytest.warns(UserWarning, match="CPU dropout masks come from torch's generator.*no C compiler 'no-such-compiler-here'"):
        assert native.keep_mask_library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dropout.mask_generator() == dropout.TORCH_WORDS  # the answer is kept: no second warning
        torch.manual_seed(7)
        keep, _ = keep_mask(torch.Size([10, 11]), 0.1, torch.float32, torch.device("cpu"))
    torch.manual_seed(7)
    words = torch.empty(28, dtype=torch.int64).random_(-(1 << 63), None)
    assert torch.equal(keep, (words.view(torch.int16)[:110].view(10, 11) >= 6554 - LEVELS // 2).float())


def test_a_failing_build_names_the_compilers_first_error_line(fresh_kernel, monkeypatch, tmp_path):
    fake = tmp_path / "fakecc"
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "fakecc 1.0"; exit 0; }\necho "keep_mask.c:1: error: boom" >&2\necho more >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(native.KernelUnavailable, match=r"could not build keep_mask.c: keep_mask.c:1: error: boom$"):
        native.build()
    assert not list(fresh_kernel.glob("*.so"))  # nothing half-built looks finished


@needs_cc
def test_a_compiler_without_openmp_builds_the_single_threaded_kernel(fresh_kernel, monkeypatch, tmp_path):
    real = shutil.which(os.environ.get("CC") or "cc")
    fake = tmp_path / "cc-no-openmp"  # fails on -fopenmp, as a compiler without an OpenMP runtime does
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && {{ echo "unsupported option -fopenmp" >&2; exit 1; }}; done\nexec {real} "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    calls = []
    real_run = native._run
    monkeypatch.setattr(native, "_run", lambda command: calls.append(command) or real_run(command))
    library = native.keep_mask_library()
    assert library is not None and len(list(fresh_kernel.glob("*.so"))) == 1
    compiles = [c for c in calls if "--version" not in c]
    assert ("-fopenmp" in compiles[0]) == native._torch_runs_libgomp() and "-fopenmp" not in compiles[-1]
    out = torch.empty(300, dtype=torch.uint8)
    library.keep_mask_8(out.data_ptr(), 300, 6554, 1, 5)
    assert out.bool().tolist() == expected_mask(300, 6554, 5)


@needs_cc
def test_an_openmp_build_that_does_not_load_gives_way_to_the_plain_one(fresh_kernel, monkeypatch):
    monkeypatch.setattr(native, "_torch_runs_libgomp", lambda: True)
    monkeypatch.setattr(native, "_loads", lambda path: False)  # as against a libgomp lacking its symbols
    calls = []
    real_run = native._run
    monkeypatch.setattr(native, "_run", lambda command: calls.append(command) or real_run(command))
    built = native.build()
    compiles = [c for c in calls if "--version" not in c]
    assert "-fopenmp" in compiles[0] and "-fopenmp" not in compiles[1] and len(compiles) == 2
    assert len(list(fresh_kernel.glob("*.so"))) == 2 and built.is_file()
    native.check(native._load(built))  # the plain build is a working kernel


def test_peftlab_native_0_turns_the_kernel_off(fresh_kernel, monkeypatch):
    monkeypatch.setenv("PEFTLAB_NATIVE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.keep_mask_library() is None and dropout.mask_generator() == dropout.TORCH_WORDS


@needs_cc
def test_a_cache_that_cannot_be_written_falls_back_with_one_line(fresh_kernel, monkeypatch, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("PEFTLAB_CACHE", str(blocked))
    with pytest.raises(native.KernelUnavailable, match="cannot write the kernel under .*a-file/native"):
        native.build()
    with pytest.warns(UserWarning, match="CPU dropout masks come from torch's generator"):
        assert native.keep_mask_library() is None
