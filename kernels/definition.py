"""The one definition of ES noise (the bottom of the kernel family): eps(seed, tensor name)[i] ~ N(0, 1), a pure function of
(seed, name, element index i), the same bits on every device.

Counter-based: element i of tensor `name` for population member `seed` comes from Philox4x32-10
(Salmon et al. 2011, the generator of cuRAND and Triton) with key = a BLAKE2b digest of
(seed, name) and counter = i // 4, lane i % 4. So a tensor drawn whole or in any slice gives the
same values (a tensor-parallel rank draws exactly its shard), and nothing depends on the device,
its model or a kernel's launch shape (PyTorch's CUDA `normal_` sizes its grid from the SM count).

The 32 random bits become a normal number by integer arithmetic only: the top bit is the sign; the
other 31 select a point of a fixed table of the half-normal quantile function (3201 nodes, dense
near the tails), linearly interpolated in fixed point, then converted to float32 once. Integer
arithmetic and one correctly rounded conversion give the same bits in the torch reference here, the
CPU kernel (kernels.cpu, C) and the CUDA kernel (kernels.cuda). The interpolated
quantile is within 2e-5 of the exact one (tested); values lie in [-6.24, 6.24].

Why not torch.Generator: the earlier code seeded one generator per (seed, name), which made every
draw serial, device-dependent (CPU and CUDA streams differ, CUDA's depends on the SM count), and
impossible to slice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays out of the core's import path (`--help` must be instant)
    import torch

MAX_SEED = 2**31 - 1

# Philox4x32-10 constants (Random123).
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF

# The quantile table: nodes t (distance of the 31 bits from the top) at every t < 2**(K+1), then
# 2**K nodes per octave of t up to 2**31. Values in fixed point with FRACTION_BITS.
TABLE_BITS = 7
FRACTION_BITS = 27
TABLE_SIZE = (32 - TABLE_BITS) * 2**TABLE_BITS + 1
TABLE_SHA256 = "84d30613d5f7818620a79a1affd5799c24e9169d0bebf164fe16b79e50baa071"  # tests and gpu-check compare


@dataclasses.dataclass(frozen=True)
class Slice:
    """Where a (rows x width) block lies in its full tensor: element (row0 + r) * row_stride + col0 + c
    (a whole matrix: Slice(0, 0, width); a tensor-parallel shard of rows or columns: its offsets)."""

    row0: int = 0
    col0: int = 0
    row_stride: int = 0


def as_rows(tensor: "torch.Tensor") -> "torch.Tensor":
    """A 2-D (rows, width) view: a matrix as it is, a vector as one row."""
    return tensor.view(tensor.shape[0], -1) if tensor.dim() >= 2 else tensor.view(1, -1)


def check_sigma(sigma) -> None:
    """sigma must be a finite number > 0 (checked before any engine call)."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")


def philox_key(seed: int, name: str) -> tuple[int, int]:
    """The two 32-bit Philox key words of tensor `name` for population member `seed`."""
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"noise seed {seed} is outside [0, 2**31-1]; draw seeds from that range")
    digest = hashlib.blake2b(f"philox/{int(seed)}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def node_t(i: int) -> int:
    """The t of table node i."""
    k = TABLE_BITS
    if i < 2 ** (k + 1):
        return i
    octave, q = divmod(i - 2 ** (k + 1), 2**k)
    return (2**k + q) << (octave + 1)


@lru_cache(maxsize=1)
def quantile_table() -> tuple[int, ...]:
    """round(Q(t_i) * 2**FRACTION_BITS), Q(t) the half-normal quantile at 1 - (t + 0.5) / 2**31."""
    from statistics import NormalDist

    normal = NormalDist()
    values = []
    for i in range(TABLE_SIZE):
        t = node_t(i)
        values.append(round(-normal.inv_cdf((t + 0.5) / 2**32) * 2**FRACTION_BITS))
    return tuple(values)


def table_digest() -> str:
    data = b"".join(v.to_bytes(4, "little", signed=True) for v in quantile_table())
    return hashlib.sha256(data).hexdigest()


# ---- the reference: the definition in torch integer ops (any device; slow, for tests) -------------
def _mulhilo(a: "torch.Tensor", m: int):
    """(hi, lo) 32-bit words of a * m for a < 2**32 held in int64, without int64 overflow."""
    low = a * (m & 0xFFFF)  # < 2**48
    high = a * (m >> 16)  # < 2**48
    s = high + (low >> 16)
    return s >> 16, ((s & 0xFFFF) << 16) | (low & 0xFFFF)


def philox_reference(blocks: "torch.Tensor", key: tuple[int, int]):
    """Philox4x32-10 of counters (block & 0xFFFFFFFF, block >> 32, 0, 0): four int64 tensors in [0, 2**32)."""
    import torch

    c0, c1 = blocks & MASK32, (blocks >> 32) & MASK32
    c2 = c3 = torch.zeros_like(blocks)
    k0, k1 = key
    for r in range(PHILOX_ROUNDS):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def bits_to_normal_reference(u: "torch.Tensor") -> "torch.Tensor":
    """The table map from 32 random bits (int64 in [0, 2**32)) to float32 normal numbers."""
    import torch

    k = TABLE_BITS
    table = torch.tensor(quantile_table(), dtype=torch.int64, device=u.device)
    t = 0x7FFFFFFF - (u & 0x7FFFFFFF)
    n = torch.zeros_like(t)
    for b in (16, 8, 4, 2, 1):
        n = torch.where((t >> (n + b)) > 0, n + b, n)
    length = torch.where(t > 0, n + 1, 0)  # bit length of t
    shift = torch.clamp(length - 1 - k, min=0)
    index = torch.where(length <= k + 1, t, (length - k - 1) * 2**k + (t >> shift))
    width_left = (1 << shift) - (t & ((1 << shift) - 1))  # w - r
    near, far = table[index], table[index + 1]
    fixed = far + (((near - far) * width_left) >> shift)
    value = fixed.to(torch.float32) * 2.0**-FRACTION_BITS
    return torch.where((u >> 31) > 0, -value, value)


def noise_reference(seed: int, name: str, indices: "torch.Tensor") -> "torch.Tensor":
    """eps(seed, name) at the given element indices (int64), by the definition above."""
    return noise_reference_from_key(philox_key(seed, name), indices)


def noise_reference_from_key(key: tuple[int, int], indices: "torch.Tensor") -> "torch.Tensor":
    """eps at the given element indices (int64) for a Philox key (philox_key(seed, name))."""
    import torch

    lanes = philox_reference(indices >> 2, key)
    u = torch.stack(lanes, dim=-1).gather(-1, (indices & 3).unsqueeze(-1)).squeeze(-1)
    return bits_to_normal_reference(u)
