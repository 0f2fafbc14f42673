"""The CPU kernels' library: kernels/noise_cpu.c (the noise; a member's weights written while its
noise is drawn; the update's sum of many members' noise in one pass; the engines' weight checksum),
compiled with the system C compiler and called through ctypes (which releases the GIL). Which level
a process uses is kernels.cpu's choice.

The C source is built for named instruction-set levels, never for "this machine" (-march=native
gave wrong noise on AVX-512 processors: a compiler defect, see docs/design/noise.md):

    avx2      x86-64 with AVX2 and FMA: Philox and the table map on 8 lanes in intrinsics
    portable  plain C, any processor (aarch64 too)
    torch     no compiler, or no level passed its check: the torch code, same values, many times slower

At first use the best level this processor runs is built (cached), loaded and checked against the
torch reference (kernels.cpu_check); a level that fails is refused with one warning naming the CPU,
the level refused and the level used, and the next level down is tried. ESVLLM_CPU_KERNEL=LEVEL
caps the level (tests run each one). The level in use is in every engine's info (engines.json).

The library is cached in $ESVLLM_CACHE/kernels (default ~/.cache/esvllm/kernels), named by a
digest of the source, the flags, the level and the compiler's path and version, and written
atomically, so concurrent engines never load a half-written file and a build from another compiler
or level is never loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from kernels.definition import quantile_table


SOURCE = Path(__file__).with_name("noise_cpu.c")
HEADERS = (Path(__file__).with_name("noise_cpu_avx2.h"),)  # included by SOURCE: part of the cache key
LEVELS = ("avx2", "portable")  # best first; the torch reference is below them
# No fast-math: the one int -> float conversion and the fma stay exact.
COMMON_FLAGS = ["-O3", "-funroll-loops", "-fPIC", "-shared", "-fno-fast-math"]
LIBS = ["-lm"]  # fmaf, where the processor has no FMA instruction
FAULT_ENV = "ESVLLM_KERNEL_FAULT"  # tests only: build this level with a deliberate fault


class KernelBuildError(RuntimeError):
    """A level's library could not be compiled."""


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def level_flags(level: str) -> list[str]:
    """The compiler flags of a named level: the same instruction set whatever machine builds it."""
    if level == "portable":
        baseline = ["-march=x86-64", "-mtune=generic"] if is_x86() else []
        flags = [*COMMON_FLAGS, *baseline, "-DESVLLM_PORTABLE"]
    elif level == "avx2":
        flags = [*COMMON_FLAGS, "-march=x86-64", "-mtune=generic", "-mavx2", "-mfma", "-DESVLLM_LEVEL_AVX2"]
    else:
        raise ValueError(f"unknown CPU kernel level {level!r}; levels: {', '.join(LEVELS)}")
    if os.environ.get(FAULT_ENV) == level:
        flags.append("-DESVLLM_INJECT_FAULT")
    return flags


def cpu_model() -> str:
    """The processor's name, for warnings and engines.json."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    return Path(os.environ.get("ESVLLM_CACHE", Path.home() / ".cache" / "esvllm")) / "kernels"


def find_compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


@lru_cache(maxsize=None)
def compiler_identity(compiler: str) -> str:
    """The compiler's resolved path, version and target: part of the cache key."""
    path = shutil.which(compiler) or compiler
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
        target = subprocess.run([path, "-dumpmachine"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelBuildError(f"{compiler}: cannot run ({exc})") from exc
    return f"{os.path.realpath(path)}\n{version.strip()}\n{target.strip()}"


def build(compiler: str, level: str, extra_flags: tuple[str, ...] = ()):
    """The kernel of `level` compiled (cached by source, flags, level and compiler) and loaded."""
    flags = [*level_flags(level), *extra_flags]
    sources = [SOURCE.read_bytes(), *(header.read_bytes() for header in HEADERS)]
    key = b"\0".join([*sources, " ".join(flags + LIBS).encode(), level.encode(), compiler_identity(compiler).encode()])
    target = cache_dir() / f"noise_cpu-{level}-{hashlib.sha256(key).hexdigest()[:16]}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            built = Path(scratch) / target.name
            done = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built), *LIBS], capture_output=True,
                                  text=True)
            if done.returncode != 0:
                raise KernelBuildError(f"{compiler} {' '.join(flags)}: {done.stderr.strip()[-400:]}")
            os.replace(built, target)
    return bind(ctypes.CDLL(str(target)))


def bind(lib):
    i64, u32, ptr = ctypes.c_int64, ctypes.c_uint32, ctypes.c_void_p
    signatures = {
        "fill_rows": [ptr, i64, i64, ptr, u32, u32, i64, i64, i64],
        "perturb_rows": [ptr, ptr, ptr, ctypes.c_float, i64, i64, ptr, u32, u32, i64, i64, i64],
        "combine_rows": [ptr, i64, i64, ptr, i64, ptr, ptr, ptr, i64, i64, i64],
        "bits_to_normal": [ptr, i64, ptr, ptr],
        "checksum_rows": [ptr, ctypes.c_int32, i64, i64, i64, i64, i64, ptr],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = None, argtypes
    lib.esvllm_cpu_level.restype, lib.esvllm_cpu_level.argtypes = ctypes.c_int, []
    return lib


def supported_levels(compiler: str) -> list[str]:
    """The levels this processor (and its OS) runs, best first, as the CPU itself reports."""
    cpu = build(compiler, "portable").esvllm_cpu_level() if is_x86() else 1
    return ["avx2", "portable"] if cpu >= 2 else ["portable"]


@lru_cache(maxsize=1)
def table_tensor():
    import torch

    return torch.tensor(quantile_table(), dtype=torch.int32)


def fill_rows(out, key: tuple[int, int], row0: int, col0: int, row_stride: int, lib) -> None:
    """out (contiguous float32, rows x width) := the noise block (kernels.definition) through `lib`."""
    rows, width = out.shape
    lib.fill_rows(out.data_ptr(), rows, width, table_tensor().data_ptr(), key[0], key[1], row0, col0, row_stride)


def perturb_rows(eps, master, dst, sigma: float, key: tuple[int, int], row0: int, col0: int, row_stride: int,
                 lib) -> None:
    """eps := the noise block (as fill_rows) and dst := master + sigma * eps (one rounding), in one pass.
    All three contiguous float32 CPU tensors of eps's (rows, width) shape."""
    rows, width = eps.shape
    lib.perturb_rows(eps.data_ptr(), master.data_ptr(), dst.data_ptr(), sigma, rows, width, table_tensor().data_ptr(),
                     key[0], key[1], row0, col0, row_stride)


def combine_rows(delta, terms: list[tuple[tuple[int, int], float, object]], row0: int, col0: int,
                 row_stride: int, lib) -> None:
    """delta (contiguous float32, rows x width) := sum of coeff * eps over `terms` (key, coeff, kept),
    in order, each term added with one rounding; eps is read from `kept` (a tensor of delta's size
    holding that noise) or, when kept is None, drawn."""
    n = len(terms)
    keys = (ctypes.c_uint32 * (2 * n))(*[w for key, _, _ in terms for w in key])
    coeffs = (ctypes.c_float * n)(*[coeff for _, coeff, _ in terms])
    kept = (ctypes.c_void_p * n)(*[None if k is None else k.data_ptr() for _, _, k in terms])
    rows, width = delta.shape
    lib.combine_rows(delta.data_ptr(), rows, width, table_tensor().data_ptr(), n, keys, coeffs, kept,
                     row0, col0, row_stride)


def checksum_rows(ints, row0: int, col0: int, row_stride: int, lib) -> tuple[int, int]:
    """(sum of v, sum of v * (index % 7 + 1)) of a contiguous rows x width int32 or int16 CPU tensor,
    element (r, c) at index (row0 + r) * row_stride + col0 + c."""
    out = (ctypes.c_uint64 * 4)()
    rows, width = ints.shape
    lib.checksum_rows(ints.data_ptr(), ints.element_size(), rows, width, row0, col0, row_stride, out)
    signed = lambda low, high: ((high << 64) | low) - ((high >> 63) << 128)
    return signed(out[0], out[1]), signed(out[2], out[3])


def bits_to_normal(lib, words) -> "object":
    """The table map of a tensor of 32-bit patterns (int64 in [0, 2**32)) through `lib`: float32."""
    import torch

    packed = torch.from_numpy(words.numpy().astype("uint32").view("int32"))
    out = torch.empty(words.numel(), dtype=torch.float32)
    lib.bits_to_normal(packed.data_ptr(), words.numel(), table_tensor().data_ptr(), out.data_ptr())
    return out
