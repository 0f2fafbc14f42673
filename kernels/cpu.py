"""The kernel interface on CPU (see kernels/__init__.py): the C kernels of the best level this
processor runs that passes its known-answer check (kernels.cpu_check), else the torch reference.

    avx2      x86-64 with AVX2 and FMA: Philox and the table map on 8 lanes in intrinsics
    portable  plain C, any processor (aarch64 too)
    torch     no compiler, or no level passed its check: kernels.reference, same values, many times slower

The level is chosen once a process, at first use; a level that fails its check is refused with one
warning naming the CPU, the level refused and the level used, and the next level down is tried.
ESVLLM_CPU_KERNEL=LEVEL caps the level (tests run each one). The level in use is in every engine's
info (engines.json).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from functools import lru_cache

from kernels import cpu_lib, reference
from kernels.cpu_check import check_kernel
from kernels.cpu_lib import LEVELS, KernelBuildError, build, cpu_model, find_compiler, supported_levels
from kernels.definition import Slice

logger = logging.getLogger(__name__)

REFERENCE = "torch"
LEVEL_ENV = "ESVLLM_CPU_KERNEL"  # cap the level: avx2, portable or torch


@dataclasses.dataclass(frozen=True)
class Kernel:
    """The CPU kernel in use: its level, the library (None for the torch reference) and the levels
    refused on this machine with the reason."""

    level: str
    lib: object | None
    refused: tuple[tuple[str, str], ...] = ()


def runnable_levels(compiler: str) -> list[str]:
    """The supported levels, best first, at most the one ESVLLM_CPU_KERNEL names."""
    cap = os.environ.get(LEVEL_ENV, LEVELS[0])
    if cap not in (*LEVELS, REFERENCE):
        raise ValueError(f"{LEVEL_ENV}={cap!r}: not a CPU kernel level; use one of {', '.join(LEVELS)}, {REFERENCE}")
    if cap == REFERENCE:
        return []
    runnable = supported_levels(compiler)
    return runnable[runnable.index(cap):] if cap in runnable else runnable


@lru_cache(maxsize=1)
def kernel() -> Kernel:
    """The best level that builds and passes its check against the torch reference (once a process)."""
    compiler = find_compiler()
    if compiler is None:
        logger.warning("no C compiler: ES noise on CPU uses the torch reference (same values, much slower)")
        return Kernel(REFERENCE, None)
    refused = []
    try:
        levels = runnable_levels(compiler)
    except KernelBuildError as exc:
        levels, refused = [], [("portable", f"does not build: {exc}")]
    chosen = None
    for level in levels:
        try:
            lib = build(compiler, level)
            problem = check_kernel(lib)
        except KernelBuildError as exc:
            problem = f"does not build: {exc}"
        if problem is None:
            chosen = Kernel(level, lib, tuple(refused))
            break
        refused.append((level, problem))
    chosen = chosen or Kernel(REFERENCE, None, tuple(refused))
    if refused:
        reasons = "; ".join(f"level {name} refused: {why}" for name, why in refused)
        logger.warning("CPU %s: %s; using level %s (same values; see docs/design/noise.md)",
                       cpu_model(), reasons, chosen.level)
    return chosen


def library():
    """The checked kernel library, or None (the torch reference)."""
    return kernel().lib


def level() -> str:
    return kernel().level


def describe() -> dict:
    """What engines.json records about this process's CPU kernel."""
    chosen = kernel()
    return {"cpu_kernel": chosen.level, "cpu": cpu_model(),
            **({"cpu_kernel_refused": dict(chosen.refused)} if chosen.refused else {})}


def _fast(*tensors) -> bool:
    """The C kernels take contiguous float32 rows."""
    return all(t.is_contiguous() and repr(t.dtype) == "torch.float32" for t in tensors)


def fill(out, key: tuple[int, int], where: Slice) -> None:
    lib = library()
    if lib is None or not _fast(out):
        return reference.fill(out, key, where)
    cpu_lib.fill_rows(out, key, where.row0, where.col0, where.row_stride, lib)


def perturb(dst, master, key: tuple[int, int], sigma: float, where: Slice, eps=None) -> None:
    lib = library()
    if lib is None or eps is None or not _fast(dst, master, eps):
        return reference.perturb(dst, master, key, sigma, where, eps)
    cpu_lib.perturb_rows(eps, master, dst, sigma, key, where.row0, where.col0, where.row_stride, lib)


def combine(out, terms, where: Slice) -> None:
    lib = library()
    if lib is None or not _fast(out):
        return reference.combine(out, terms, where)
    cpu_lib.combine_rows(out, terms, where.row0, where.col0, where.row_stride, lib)


def checksum(ints, where: Slice) -> tuple[int, int]:
    lib = library()
    if lib is None or not ints.is_contiguous():
        return reference.checksum(ints, where)
    return cpu_lib.checksum_rows(ints, where.row0, where.col0, where.row_stride, lib)
