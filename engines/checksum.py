"""Weight checksums: integer sums over a tensor's bits, which shards add up to and engines compare.

Per HF tensor, two sums over its elements' bits read as integers (int32 for float32, int16 for 16-bit
dtypes): the plain sum, and the sum weighted by (global element index mod 7) + 1, so that swapped
elements change it too. Both are sums, so the shards of a tensor-parallel engine add up to the
unsharded tensor's figures. Computed by the kernel family (the C kernel on CPU, torch integer ops on
CUDA), chunked: no tensor-sized temporaries.
"""

from __future__ import annotations

import hashlib

import torch

from kernels import Slice, as_rows

Parts = dict[str, tuple[int, int]]


def tensor_sums(kernels, tensor: torch.Tensor, where: Slice) -> tuple[int, int]:
    """(total, positional) of one tensor (or a rank's part of it, `where` in the full tensor)."""
    ints = tensor.view(torch.int32) if tensor.element_size() == 4 else tensor.view(torch.int16)
    return kernels.checksum(as_rows(ints), where)


def add_parts(results: list[Parts]) -> Parts:
    """The parts of a tensor-parallel engine's ranks summed into the unsharded tensors' parts."""
    total: dict[str, list[int]] = {}
    for parts in results:
        for name, (plain, positional) in parts.items():
            sums = total.setdefault(name, [0, 0])
            sums[0] += plain
            sums[1] += positional
    return {name: (v[0], v[1]) for name, v in total.items()}


def digest(parts: Parts) -> str:
    """The checksum string of per-tensor (total, positional) sums, in sorted name order."""
    hasher = hashlib.blake2b(digest_size=16)
    for name in sorted(parts):
        total, positional = parts[name]
        hasher.update(f"{name}:{total}:{positional};".encode())
    return hasher.hexdigest()
