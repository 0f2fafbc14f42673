"""The known-answer check a compiled CPU kernel passes before any engine uses it.

Numeric libraries test each SIMD target at load; so do we. The answers are computed here, now, by
the torch reference of kernels.definition (never numbers stored from one machine), for the cases where a
build can go wrong: every edge bit pattern of the table map (the octave boundaries, where a wrong
bit length picks the wrong node), both signs, the vector body and the scalar tail, a counter that
carries into its high word, unaligned slices and tensor-parallel shards, one fused perturb, one
update of several members (kept and drawn noise), and the checksum of int32 and int16 words.
About 0.1 s.
"""

from __future__ import annotations

import torch

from kernels import cpu_lib
from kernels.definition import bits_to_normal_reference, noise_reference_from_key, philox_key

NAME = "model.layers.0.mlp.down_proj.weight"
# (rows, width, row0, col0, row_stride): whole, a row shard, a column shard, unaligned, tiny;
# the last starts 40 elements before block 2**32, so the counter carries into its high word.
SHARDS = [(1, 1001, 0, 0, 0), (7, 13, 3, 5, 40), (3, 300, 1, 77, 1000), (1, 3, 0, 1, 0), (1, 300, 0, 2**34 - 40, 0)]


def edge_words() -> torch.Tensor:
    """32-bit patterns whose t = 0x7FFFFFFF - (u & 0x7FFFFFFF) is every value below 520, each power
    of two and its neighbours, the largest, and random ones; with both signs; 2,378 words (not a
    multiple of 8, so the vector path's scalar tail runs too)."""
    generator = torch.Generator().manual_seed(0)
    powers = [(1 << k) + d for k in range(31) for d in range(-3, 4) if 0 <= (1 << k) + d < 2**31]
    t = torch.cat([torch.arange(520), torch.tensor(powers, dtype=torch.int64),
                   torch.randint(0, 2**31, (454,), generator=generator), torch.tensor([2**31 - 1])])
    u = 0x7FFFFFFF - t
    return torch.cat([u, u | 0x80000000])


def same_bits(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and torch.equal(got.contiguous().view(torch.int32), want.contiguous().view(torch.int32))


def reference_block(key, rows, width, row0, col0, stride) -> torch.Tensor:
    index = (torch.arange(rows, dtype=torch.int64)[:, None] + row0) * stride + col0 + torch.arange(width)[None, :]
    return noise_reference_from_key(key, index)


def one_rounding_sum(terms: list[tuple[float, torch.Tensor]], start: torch.Tensor) -> torch.Tensor:
    """start + c_1 * x_1 + ... in order, each step rounded once to float32 (products exact in float64)."""
    acc = start
    for coeff, x in terms:
        acc = (acc.double() + torch.tensor(coeff, dtype=torch.float32).double() * x.double()).float()
    return acc


def check_kernel(lib) -> str | None:
    """None when `lib` computes every case exactly as the reference; else what differed."""
    words = edge_words()
    if not same_bits(cpu_lib.bits_to_normal(lib, words), bits_to_normal_reference(words)):
        return "the table map differs from the reference on edge bit patterns"
    key = philox_key(7, NAME)
    for rows, width, row0, col0, stride in SHARDS:
        out = torch.empty(rows, width)
        cpu_lib.fill_rows(out, key, row0, col0, stride, lib=lib)
        if not same_bits(out, reference_block(key, rows, width, row0, col0, stride)):
            return f"the noise differs from the reference on a {rows}x{width} block at ({row0}, {col0}, {stride})"
    generator = torch.Generator().manual_seed(1)
    master = torch.randn(5, 37, generator=generator) * 0.05
    eps, dst = torch.empty(5, 37), torch.empty(5, 37)
    cpu_lib.perturb_rows(eps, master, dst, 0.003, key, 0, 0, 37, lib=lib)
    want_eps = reference_block(key, 5, 37, 0, 0, 37)
    if not (same_bits(eps, want_eps) and same_bits(dst, one_rounding_sum([(0.003, want_eps)], master))):
        return "the fused perturb differs from master + sigma * eps rounded once"
    keys = [philox_key(s, NAME) for s in (11, 12, 13, 14)]
    coeffs = [0.5, -0.25, 1e-3, -7e-4]
    noises = [reference_block(k, 3, 101, 1, 4, 120) for k in keys]
    delta = torch.full((3, 101), float("nan"))
    kept = [None, noises[1], None, None]  # one member's noise read from a buffer, the others drawn
    cpu_lib.combine_rows(delta, list(zip(keys, coeffs, kept)), 1, 4, 120, lib=lib)
    if not same_bits(delta, one_rounding_sum(list(zip(coeffs, noises)), torch.zeros(3, 101))):
        return "the update of several members differs from their terms added in order, each rounded once"
    for dtype in (torch.int32, torch.int16):
        ints = torch.randint(torch.iinfo(dtype).min, torch.iinfo(dtype).max, (4, 29), generator=generator,
                             dtype=torch.int64).to(dtype)
        index = (torch.arange(4)[:, None] + 2) * 40 + 3 + torch.arange(29)[None, :]
        values = ints.to(torch.int64)
        want = (int(values.sum()), int((values * (index % 7 + 1)).sum()))
        if cpu_lib.checksum_rows(ints, 2, 3, 40, lib=lib) != want:
            return f"the checksum of {dtype} words differs from the sums it defines"
    return None

