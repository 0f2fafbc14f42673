"""The CPU kernels: esvllm/noise_cpu.c (the noise; a member's weights written while its noise is
drawn; the update's sum of many members' noise in one pass; the engines' weight checksum), compiled
once with the system C compiler and called through ctypes (which releases the GIL). With AVX2 the
noise runs 8 lanes at once in intrinsics, elsewhere in portable C; both give the same bits (tested).
Without a compiler the torch code computes the same noise, many times slower (a warning says so).

The library is cached in $ESVLLM_CACHE/kernels (default ~/.cache/esvllm/kernels), named by a
digest of the source and flags, and written atomically, so concurrent engines never load a
half-written file.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from esvllm.noise import quantile_table

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("noise_cpu.c")
# -march=native: the values are integer arithmetic, the same bits whatever vector instructions are
# used; no fast-math, so the one int -> float conversion stays exact.
FLAGS = ["-O3", "-funroll-loops", "-march=native", "-fPIC", "-shared", "-fno-fast-math"]
LIBS = ["-lm"]  # fmaf, where the processor has no FMA instruction


def cpu_flags() -> str:
    """This processor's feature flags: the cached library is built for them (-march=native)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return os.uname().machine


def cache_dir() -> Path:
    return Path(os.environ.get("ESVLLM_CACHE", Path.home() / ".cache" / "esvllm")) / "kernels"


@lru_cache(maxsize=1)
def library():
    """The compiled kernel, or None when no C compiler is found."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler: ES noise on CPU uses the torch reference (same values, much slower)")
        return None
    return build(compiler, FLAGS)


def build(compiler: str, flags: list[str]):
    """The kernel compiled with `flags` (cached by a digest of source, flags and processor), loaded."""
    source = SOURCE.read_bytes()
    tag = hashlib.sha256(source + " ".join(flags + LIBS).encode() + cpu_flags().encode()).hexdigest()[:16]
    target = cache_dir() / f"noise_cpu-{tag}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            built = Path(scratch) / target.name
            subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built), *LIBS], check=True, capture_output=True)
            os.replace(built, target)
    lib = ctypes.CDLL(str(target))
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
    return lib


@lru_cache(maxsize=1)
def table_tensor():
    import torch

    return torch.tensor(quantile_table(), dtype=torch.int32)


def fill_rows(out, key: tuple[int, int], row0: int, col0: int, row_stride: int) -> None:
    lib = library()
    rows, width = out.shape
    if lib is None:
        import torch

        from esvllm.noise import noise_reference

        index = (torch.arange(rows, dtype=torch.int64)[:, None] + row0) * row_stride + col0 + \
            torch.arange(width, dtype=torch.int64)[None, :]
        out.copy_(noise_reference_from_key(key, index))
        return
    table = table_tensor()
    lib.fill_rows(out.data_ptr(), rows, width, table.data_ptr(), key[0], key[1], row0, col0, row_stride)


def perturb_rows(eps, master, dst, sigma: float, key: tuple[int, int], row0: int, col0: int, row_stride: int) -> bool:
    """eps := the noise block (as fill_rows) and dst := master + sigma * eps (one rounding), in one pass.
    All three contiguous float32 CPU tensors of eps's (rows, width) shape. False (nothing done)
    without a compiler."""
    lib = library()
    if lib is None:
        return False
    rows, width = eps.shape
    lib.perturb_rows(eps.data_ptr(), master.data_ptr(), dst.data_ptr(), sigma, rows, width, table_tensor().data_ptr(),
                     key[0], key[1], row0, col0, row_stride)
    return True


def combine_rows(delta, terms: list[tuple[tuple[int, int], float, object]], row0: int, col0: int,
                 row_stride: int) -> bool:
    """delta (contiguous float32, rows x width) := sum of coeff * eps over `terms` (key, coeff, kept),
    in order, each term added with one rounding; eps is read from `kept` (a tensor of delta's size
    holding that noise) or, when kept is None, drawn. False (nothing done) without a compiler."""
    lib = library()
    if lib is None:
        return False
    n = len(terms)
    keys = (ctypes.c_uint32 * (2 * n))(*[w for key, _, _ in terms for w in key])
    coeffs = (ctypes.c_float * n)(*[coeff for _, coeff, _ in terms])
    kept = (ctypes.c_void_p * n)(*[None if k is None else k.data_ptr() for _, _, k in terms])
    rows, width = delta.shape
    lib.combine_rows(delta.data_ptr(), rows, width, table_tensor().data_ptr(), n, keys, coeffs, kept,
                     row0, col0, row_stride)
    return True


def checksum_rows(ints, row0: int, col0: int, row_stride: int) -> tuple[int, int] | None:
    """(sum of v, sum of v * (index % 7 + 1)) of a contiguous rows x width int32 or int16 CPU tensor,
    element (r, c) at index (row0 + r) * row_stride + col0 + c; None without a compiler."""
    lib = library()
    if lib is None:
        return None
    out = (ctypes.c_uint64 * 4)()
    rows, width = ints.shape
    lib.checksum_rows(ints.data_ptr(), ints.element_size(), rows, width, row0, col0, row_stride, out)
    signed = lambda low, high: ((high << 64) | low) - ((high >> 63) << 128)
    return signed(out[0], out[1]), signed(out[2], out[3])


def noise_reference_from_key(key, index):
    from esvllm.noise import bits_to_normal_reference, philox_reference

    lanes = philox_reference(index >> 2, key)
    import torch

    u = torch.stack(lanes, dim=-1).gather(-1, (index & 3).unsqueeze(-1)).squeeze(-1)
    return bits_to_normal_reference(u)
