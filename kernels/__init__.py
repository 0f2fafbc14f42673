"""The kernel family: ES noise by its one definition, computed on any device (the bottom room).

    definition   the noise's definition: Philox keys, the quantile table, the torch reference
    reference    the kernel interface in torch ops (any device; slow)
    cpu          the interface on CPU: the C kernels of noise_cpu.c (cpu_lib builds them, cpu_check
                 checks each build at load) or, failing those, the reference
    cuda         the interface on CUDA: Triton kernels
    lowrank      low-rank members' factors and their update, from the same noise

Every backend module implements the same four functions, `where` (definition.Slice) saying which
block of the full tensor the 2-D arguments are:

    fill(out, key, where)                            out := eps(key) on the block
    perturb(dst, master, key, sigma, where, eps)     dst := master + sigma * eps(key); the noise
                                                     also written into `eps` when given (CPU)
    combine(out, terms, where)                       out := sum of coeff * eps(key) over terms
                                                     (key, coeff, kept noise or None), in order
    checksum(ints, where)                            (sum v, sum v * (i % 7 + 1)) of int32/int16 words

Nothing here imports the engines or the application.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernels.definition import (MAX_SEED, TABLE_SHA256, Slice, as_rows, bits_to_normal_reference, check_sigma,
                                noise_reference, noise_reference_from_key, philox_key, quantile_table, table_digest)

if TYPE_CHECKING:  # torch stays out of the core's import path (`--help` must be instant)
    import torch

__all__ = ["MAX_SEED", "TABLE_SHA256", "Slice", "as_rows", "bits_to_normal_reference", "check_sigma", "describe",
           "fill_noise", "fill_noise_rows", "for_device", "noise", "noise_reference", "noise_reference_from_key",
           "philox_key", "quantile_table", "table_digest"]


def for_device(device):
    """The kernel module for tensors on `device` (a torch.device or its name)."""
    if str(device).startswith("cuda"):
        from kernels import cuda

        return cuda
    from kernels import cpu

    return cpu


def describe(device) -> dict:
    """What engines.json records about the kernel in use on `device`."""
    return for_device(device).describe()


def fill_noise_rows(out: "torch.Tensor", seed: int, name: str, row0: int, col0: int, row_stride: int) -> "torch.Tensor":
    """`out` (rows x width, float32, contiguous) := the block of eps(seed, name) at rows
    row0.. and columns col0.. of the tensor viewed with `row_stride` elements per row
    (element index (row0 + r) * row_stride + col0 + c): a tensor-parallel shard of rows or columns."""
    key = philox_key(seed, name)
    if repr(out.dtype) != "torch.float32" or not out.is_contiguous():
        raise ValueError(f"noise buffer must be contiguous float32, got {out.dtype} contiguous={out.is_contiguous()}")
    if out.numel():
        for_device(out.device).fill(out, key, Slice(row0, col0, row_stride))
    return out


def fill_noise(out: "torch.Tensor", seed: int, name: str, start: int = 0) -> "torch.Tensor":
    """Overwrite `out` (float32, contiguous, any device) with elements [start, start + out.numel())
    of eps(seed, name), and return it. Writes into a caller-owned buffer: hot loops allocate nothing."""
    fill_noise_rows(out.view(1, -1), seed, name, row0=0, col0=start, row_stride=0)
    return out


def noise(seed: int, name: str, shape, device="cpu") -> "torch.Tensor":
    """eps(seed, name) as a new float32 tensor of `shape` (for tests and one-off use)."""
    import torch

    return fill_noise(torch.empty(tuple(shape), dtype=torch.float32, device=device), seed, name)
