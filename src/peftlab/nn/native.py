"""peftlab's C kernel (csrc/keep_mask.c), compiled on first use and loaded with ctypes.

It is plain C with no Python or torch headers, so a build takes well under a second: `$CC` (default
`cc`) with `-O3 -march=native`, retried without `-march=native` for a compiler that lacks it. Where
torch runs on GNU OpenMP (libgomp.so.1, as Linux wheels do), it is built with `-fopenmp` too, and
large masks are split across torch's own OpenMP threads: the loader resolves the kernel's libgomp to
the copy torch has loaded, so there is one thread pool, sized by `torch.set_num_threads` (a build
that does not load against it gives way to the one without OpenMP). The
library is cached as `$PEFTLAB_CACHE/native/keep_mask-<digest>.so` (default `~/.cache/peftlab`), the
digest covering the source, the compiler's version, the flags and the CPU's instruction sets, so a
home folder shared by different machines never loads a build for another CPU. It is written under a
temporary name and renamed into place: parallel sweep workers may build it at once. Before use, the
loaded library is checked against Philox's published test vectors and against its own scalar
function; on any failure (no compiler, a failed build or check) peftlab warns once, in one line, and
keeps torch's generator. `PEFTLAB_NATIVE=0` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from peftlab.cache import cache_root

SOURCE = Path(__file__).with_name("csrc") / "keep_mask.c"
FLAGS = ("-O3", "-shared", "-fPIC", "-Wno-psabi")
TUNED = ("-march=native",)
OPENMP = ("-fopenmp",)
WIDTHS = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}  # element bytes -> C type

# Random123's known-answer tests for philox4x32_10: (counter, key) -> the block's four words.
KNOWN_ANSWERS = (
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
)


class KernelUnavailable(Exception):
    """Why the kernel cannot be used here (the one line peftlab warns with)."""


@functools.cache
def keep_mask_library() -> ctypes.CDLL | None:
    """The loaded, checked kernel, or None (after one warning) where it cannot be built or used."""
    if os.environ.get("PEFTLAB_NATIVE", "1") == "0":
        return None
    try:
        library = _load(build())
        check(library)
        return library
    except KernelUnavailable as err:
        warnings.warn(f"peftlab: CPU dropout masks come from torch's generator (slower): {err}", stacklevel=2)
        return None


def build() -> Path:
    """The cached library for this source, compiler and CPU, compiled if it is not there yet."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise KernelUnavailable(f"no C compiler {compiler!r} on PATH (set CC to one)")
    source = SOURCE.read_bytes()
    version = _run([compiler, "--version"]).stdout
    tries = [FLAGS + TUNED, FLAGS]
    if _torch_runs_libgomp():
        tries.insert(0, FLAGS + OPENMP + TUNED)
    errors = []
    for flags in tries:
        digest = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(flags).encode(), _cpu_identity()]))
        target = cache_root() / "native" / f"keep_mask-{digest.hexdigest()[:16]}.so"
        if not target.is_file():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                    partial = Path(tmp) / target.name
                    result = _run([compiler, *flags, str(SOURCE), "-o", str(partial)])
                    if result.returncode != 0:
                        errors.append((result.stderr.strip().splitlines() or ["no message"])[0])
                        continue
                    os.replace(partial, target)  # atomic: another worker sees the whole file or none
            except OSError as err:
                raise KernelUnavailable(f"cannot write the kernel under {target.parent}: {err}") from None
        if OPENMP[0] in flags and not _loads(target):
            continue  # linked against symbols torch's libgomp lacks: the build without OpenMP
        return target
    raise KernelUnavailable(f"{compiler} could not build {SOURCE.name}: {errors[-1] if errors else 'no message'}")


def check(library: ctypes.CDLL) -> None:
    """Philox's known answers, and the vectorised mask against the scalar block function."""
    for counter, key, expected in KNOWN_ANSWERS:
        if philox_block(library, counter, key) != expected:
            raise KernelUnavailable(f"the build of {SOURCE.name} fails Philox's known-answer test")
    seed, n, cut = 0x0123456789ABCDEF, 300, 30000  # 300: more than one 256-element pass, and a cut-off tail
    mask = (ctypes.c_uint8 * n)()
    library.keep_mask_8(mask, n, cut, 1, seed)
    key = (seed & 0xFFFFFFFF, seed >> 32)
    for e in range(n):
        words = philox_block(library, (8 * (e // 64) + e % 8, 0, 0, 0), key)
        number = (e % 64) // 8
        if mask[e] != int(((words[number // 2] >> (16 * (number % 2))) & 0xFFFF) >= cut):
            raise KernelUnavailable(f"the build of {SOURCE.name} disagrees with its own scalar Philox at element {e}")


def philox_block(library: ctypes.CDLL, counter: tuple[int, ...], key: tuple[int, ...]) -> tuple[int, ...]:
    out = (ctypes.c_uint32 * 4)()
    library.philox4x32_10((ctypes.c_uint32 * 4)(*counter), (ctypes.c_uint32 * 2)(*key), out)
    return tuple(out)


def _load(path: Path) -> ctypes.CDLL:
    try:
        library = ctypes.CDLL(str(path))
    except OSError as err:
        raise KernelUnavailable(f"{path} does not load: {err}") from None
    for width, c_type in WIDTHS.items():
        fn = getattr(library, f"keep_mask_{8 * width}")
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32, c_type, ctypes.c_uint64]
        fn.restype = None
    library.philox4x32_10.argtypes = [ctypes.c_void_p] * 3
    library.philox4x32_10.restype = None
    return library


def _run(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KernelUnavailable(f"{command[0]} did not run: {err}") from None


def _loads(path: Path) -> bool:
    try:
        ctypes.CDLL(str(path))
        return True
    except OSError:
        return False


def _torch_runs_libgomp() -> bool:
    """Whether the OpenMP runtime torch has loaded is GNU's libgomp.so.1, which a `-fopenmp` build
    links against (any other runtime would be a second thread pool)."""
    import torch  # noqa: F401  (loads torch's OpenMP runtime before the maps are read)

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return any(line.rsplit("/", 1)[-1] == "libgomp.so.1" for line in maps.splitlines())


def _cpu_identity() -> bytes:
    """The instruction sets -march=native compiles for: the CPU flags on Linux, else the platform."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return f"{platform.machine()} {line}".encode()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {platform.platform()}".encode()
