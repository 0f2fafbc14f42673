"""The ES noise on CUDA: Triton kernels computing kernels/definition.py's definition, bit for bit.

    fill_rows(out, key, row0, col0, row_stride)                  out := eps (a block of rows x width)
    perturb_rows(dst, master, key, sigma, row0, col0, row_stride) dst := master + sigma * eps
    combine_rows(out, keys, coefficients, row0, col0, row_stride) out := sum_i c_i * eps_i

The noise never goes to memory in the last two: perturb reads the master and writes the model's
weights once, and an update of N members reads nothing but writes one delta. Each program takes a
4-aligned run of BLOCK elements of one row, runs Philox on its BLOCK/4 counters and interleaves the
four lanes, so launch shape changes nothing. `TRITON_INTERPRET=1` runs them on CPU tensors (tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import reference
from kernels.definition import FRACTION_BITS, TABLE_BITS, Slice, quantile_table

BLOCK = 1024


@triton.jit
def _philox(blocks, k0, k1):
    """Philox4x32-10 of counters (blocks lo, blocks hi, 0, 0); keys as uint32 scalars."""
    c0 = (blocks & 0xFFFFFFFF).to(tl.uint32)
    c1 = (blocks >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0)
    c3 = tl.zeros_like(c0)
    for _ in tl.static_range(10):
        _c0, _c2 = c0, c2
        c0 = tl.umulhi(_c2, 0xCD9E8D57) ^ c1 ^ k0
        c2 = tl.umulhi(_c0, 0xD2511F53) ^ c3 ^ k1
        c1 = _c2 * 0xCD9E8D57
        c3 = _c0 * 0xD2511F53
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _to_normal(u, table_ptr, K: tl.constexpr, SCALE: tl.constexpr):
    t = (0x7FFFFFFF - (u & 0x7FFFFFFF)).to(tl.int32)
    n = tl.zeros_like(t)
    n = tl.where((t >> (n + 16)) > 0, n + 16, n)
    n = tl.where((t >> (n + 8)) > 0, n + 8, n)
    n = tl.where((t >> (n + 4)) > 0, n + 4, n)
    n = tl.where((t >> (n + 2)) > 0, n + 2, n)
    n = tl.where((t >> (n + 1)) > 0, n + 1, n)
    length = tl.where(t > 0, n + 1, 0)
    shift = tl.maximum(length - 1 - K, 0)
    index = tl.where(length <= K + 1, t, (length - K - 1) * (1 << K) + (t >> shift))
    width_left = (1 << shift) - (t & ((1 << shift) - 1))
    near = tl.load(table_ptr + index)
    far = tl.load(table_ptr + index + 1)
    fixed = far + (((near - far).to(tl.int64) * width_left.to(tl.int64)) >> shift.to(tl.int64)).to(tl.int32)
    value = fixed.to(tl.float32) * SCALE
    return tl.where((u >> 31) > 0, -value, value)


@triton.jit
def _noise_block(table_ptr, k0, k1, start, BLOCK: tl.constexpr, K: tl.constexpr, SCALE: tl.constexpr):
    """eps at element indices start + [0, BLOCK) (start a multiple of 4)."""
    blocks = (start >> 2) + tl.arange(0, BLOCK // 4).to(tl.int64)
    u0, u1, u2, u3 = _philox(blocks, k0, k1)
    x0 = _to_normal(u0, table_ptr, K, SCALE)
    x1 = _to_normal(u1, table_ptr, K, SCALE)
    x2 = _to_normal(u2, table_ptr, K, SCALE)
    x3 = _to_normal(u3, table_ptr, K, SCALE)
    return tl.interleave(tl.interleave(x0, x2), tl.interleave(x1, x3))


@triton.jit
def _where(row0, col0, row_stride, width, chunks, BLOCK: tl.constexpr):
    """This program's element indices, their positions in the output block, and the mask. The grid
    is one-dimensional (rows x chunks programs): CUDA caps a grid's other dimensions at 65535."""
    pid = tl.program_id(0).to(tl.int64)
    r = pid // chunks
    first = (row0 + r) * row_stride + col0
    start = (first & ~3) + (pid % chunks) * BLOCK
    index = start + tl.arange(0, BLOCK).to(tl.int64)
    mask = (index >= first) & (index < first + width)
    return start, r * width + (index - first), mask


@triton.jit
def _fill_kernel(out_ptr, table_ptr, k0, k1, row0, col0, row_stride, width, chunks,
                 BLOCK: tl.constexpr, K: tl.constexpr, SCALE: tl.constexpr):
    start, position, mask = _where(row0, col0, row_stride, width, chunks, BLOCK)
    eps = _noise_block(table_ptr, k0.to(tl.uint32), k1.to(tl.uint32), start, BLOCK, K, SCALE)
    tl.store(out_ptr + position, eps, mask=mask)


@triton.jit
def _perturb_kernel(dst_ptr, master_ptr, table_ptr, k0, k1, sigma, row0, col0, row_stride, width, chunks,
                    BLOCK: tl.constexpr, K: tl.constexpr, SCALE: tl.constexpr):
    start, position, mask = _where(row0, col0, row_stride, width, chunks, BLOCK)
    eps = _noise_block(table_ptr, k0.to(tl.uint32), k1.to(tl.uint32), start, BLOCK, K, SCALE)
    master = tl.load(master_ptr + position, mask=mask, other=0.0)
    value = master + sigma * eps
    tl.store(dst_ptr + position, value.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _combine_kernel(out_ptr, table_ptr, keys_ptr, coeffs_ptr, members, row0, col0, row_stride, width, chunks,
                    BLOCK: tl.constexpr, K: tl.constexpr, SCALE: tl.constexpr):
    start, position, mask = _where(row0, col0, row_stride, width, chunks, BLOCK)
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(members):  # a fixed order: every engine sums the same way
        k0 = tl.load(keys_ptr + 2 * i).to(tl.uint32)
        k1 = tl.load(keys_ptr + 2 * i + 1).to(tl.uint32)
        total += tl.load(coeffs_ptr + i) * _noise_block(table_ptr, k0, k1, start, BLOCK, K, SCALE)
    tl.store(out_ptr + position, total, mask=mask)


_TABLES: dict = {}


def _table(device) -> torch.Tensor:
    if device not in _TABLES:
        _TABLES[device] = torch.tensor(quantile_table(), dtype=torch.int32, device=device)
    return _TABLES[device]


def _grid(out: torch.Tensor) -> tuple[tuple[int], int]:
    """(grid, chunks per row): each row's 4-aligned span, width + up to 3 elements, in BLOCK chunks."""
    rows, width = out.shape
    chunks = triton.cdiv(width + 3, BLOCK)
    return (rows * chunks,), chunks


def _constants() -> dict:
    return {"BLOCK": BLOCK, "K": TABLE_BITS, "SCALE": 2.0**-FRACTION_BITS}


def _require_rows(**tensors: torch.Tensor) -> None:
    """The kernels index rows x width tensors as contiguous float32 memory: a transposed or strided
    view would be read and written at the wrong elements, so it is refused."""
    for name, tensor in tensors.items():
        if tensor.dim() != 2 or not tensor.is_contiguous() or tensor.dtype not in (torch.float32, torch.bfloat16,
                                                                                  torch.float16):
            raise ValueError(f"noise kernel argument {name}: a contiguous 2-D float tensor is needed, got shape "
                             f"{tuple(tensor.shape)} strides {tensor.stride()} {tensor.dtype}; pass .contiguous()")


def fill_rows(out: torch.Tensor, key: tuple[int, int], row0: int, col0: int, row_stride: int) -> None:
    _require_rows(out=out)
    grid, chunks = _grid(out)
    _fill_kernel[grid](out, _table(out.device), key[0], key[1], row0, col0, row_stride, out.shape[1], chunks,
                       **_constants())


def perturb_rows(dst: torch.Tensor, master: torch.Tensor, key: tuple[int, int], sigma: float,
                 row0: int, col0: int, row_stride: int) -> None:
    _require_rows(dst=dst, master=master)
    if dst.shape != master.shape:
        raise ValueError(f"noise kernel: dst {tuple(dst.shape)} and master {tuple(master.shape)} differ in shape")
    grid, chunks = _grid(master)
    _perturb_kernel[grid](dst, master, _table(master.device), key[0], key[1], float(sigma), row0, col0,
                          row_stride, master.shape[1], chunks, **_constants())


def combine_rows(out: torch.Tensor, keys: list[tuple[int, int]], coefficients: list[float],
                 row0: int, col0: int, row_stride: int) -> None:
    _require_rows(out=out)
    keys_t = torch.tensor(keys, dtype=torch.int64, device=out.device)
    coeffs_t = torch.tensor(coefficients, dtype=torch.float32, device=out.device)
    grid, chunks = _grid(out)
    _combine_kernel[grid](out, _table(out.device), keys_t, coeffs_t, len(keys), row0, col0, row_stride,
                          out.shape[1], chunks, **_constants())


# ---- the kernel interface (kernels/__init__.py) --------------------------------------------------
def describe() -> dict:
    return {"noise_kernel": "triton"}


def fill(out: torch.Tensor, key: tuple[int, int], where: Slice) -> None:
    fill_rows(out, key, where.row0, where.col0, where.row_stride)


def perturb(dst: torch.Tensor, master: torch.Tensor, key: tuple[int, int], sigma: float, where: Slice,
            eps: torch.Tensor | None = None) -> None:
    if eps is not None:  # the noise is computed inside the kernel and never stored
        raise ValueError("the CUDA perturb kernel keeps no noise: pass eps=None")
    perturb_rows(dst, master, key, sigma, where.row0, where.col0, where.row_stride)


def combine(out: torch.Tensor, terms, where: Slice) -> None:
    if any(kept is not None for _, _, kept in terms):
        raise ValueError("the CUDA combine kernel draws every member's noise: pass kept=None")
    combine_rows(out, [key for key, _, _ in terms], [coeff for _, coeff, _ in terms], where.row0, where.col0,
                 where.row_stride)


checksum = reference.checksum  # torch integer ops on the GPU
