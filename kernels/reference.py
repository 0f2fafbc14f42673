"""The kernel interface (see kernels/__init__.py) in torch ops, on any device.

The definition's values computed slowly: what the CPU uses without a checked C kernel, what CUDA uses
for the checksum, and what tests hold the fast kernels against.
"""

from __future__ import annotations

import torch

from kernels.definition import Slice, noise_reference_from_key

CHECKSUM_CHUNK = 7 * 2**20  # elements per step of the checksum: no tensor-sized temporaries


def block_indices(rows: int, width: int, where: Slice, device, first_row: int = 0) -> torch.Tensor:
    """The element indices (int64) of rows [first_row, first_row + rows) of the block."""
    row_ids = torch.arange(first_row, first_row + rows, dtype=torch.int64, device=device)[:, None]
    columns = torch.arange(width, dtype=torch.int64, device=device)[None, :]
    return (where.row0 + row_ids) * where.row_stride + where.col0 + columns


def describe() -> dict:
    return {"noise_kernel": "torch"}


def fill(out: torch.Tensor, key: tuple[int, int], where: Slice) -> None:
    rows, width = out.shape
    out.copy_(noise_reference_from_key(key, block_indices(rows, width, where, out.device)))


def add_noise(dst: torch.Tensor, master: torch.Tensor, eps: torch.Tensor, sigma: float) -> None:
    """dst := master + sigma * eps, leaving eps as it was (it may be a kept member's noise)."""
    if dst.dtype == torch.float32 and master.dtype == torch.float32:
        torch.add(master, eps, alpha=sigma, out=dst)
    else:  # in float32, rounded once into the model's dtype
        dst.copy_(torch.mul(eps, sigma).add_(master))


def perturb(dst: torch.Tensor, master: torch.Tensor, key: tuple[int, int], sigma: float, where: Slice,
            eps: torch.Tensor | None = None) -> None:
    eps = torch.empty(master.shape, dtype=torch.float32, device=master.device) if eps is None else eps
    fill(eps, key, where)
    add_noise(dst, master, eps, sigma)


def combine(out: torch.Tensor, terms: list[tuple[tuple[int, int], float, torch.Tensor | None]], where: Slice) -> None:
    out.zero_()
    scratch = None
    for key, coeff, kept in terms:
        if kept is None:
            scratch = torch.empty_like(out) if scratch is None else scratch
            fill(scratch, key, where)
            kept = scratch
        out.add_(kept, alpha=coeff)


def checksum(ints: torch.Tensor, where: Slice) -> tuple[int, int]:
    rows, width = ints.shape
    total = positional = 0
    step = max(1, CHECKSUM_CHUNK // max(width, 1))
    for r in range(0, rows, step):
        block = ints[r : r + step].to(torch.int64)
        index = block_indices(block.shape[0], width, where, ints.device, first_row=r)
        total += int(block.sum())
        positional += int((block * (index % 7 + 1)).sum())
    return total, positional
