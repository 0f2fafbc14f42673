"""Low-rank ES perturbations (EGGROLL, arXiv 2511.16652): the math, on any device.

A member perturbs a weight matrix W (out x in) by sigma * E with E = A B^T / sqrt(r), A (out x r) and
B (in x r) i.i.d. N(0, 1) drawn from the member's seed: eps(seed, name + "#A") and eps(seed, name +
"#B") of kernels.definition, so every engine regenerates them from the seed alone. E has unit variance
per element, like full-rank noise. The update of N members, alpha/N * sum_i f_i E_i, is full rank:

    delta = [c_1 A_1, ..., c_N A_N] @ [B_1, ..., B_N]^T / sqrt(r)      (c_i = alpha/N * f_i)

one (out x N r) @ (N r x in) product per matrix.
"""

from __future__ import annotations

import math

import torch

from kernels import fill_noise


def factor_names(name: str) -> tuple[str, str]:
    return f"{name}#A", f"{name}#B"


def factors(seed: int, name: str, shape: tuple[int, int], rank: int, device="cpu",
            out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of member `seed` for matrix `name` of `shape` (out, in): A (out x r), B (in x r)."""
    rows, cols = shape
    a_name, b_name = factor_names(name)
    a = out[0] if out else torch.empty(rows, rank, dtype=torch.float32, device=device)
    b = out[1] if out else torch.empty(cols, rank, dtype=torch.float32, device=device)
    return fill_noise(a, seed, a_name), fill_noise(b, seed, b_name)


def combined_update(pairs: list[tuple[int, float]], name: str, shape: tuple[int, int], rank: int,
                    device="cpu") -> torch.Tensor:
    """sum_i c_i A_i B_i^T / sqrt(r) for (seed_i, c_i) in `pairs`, as one fp32 (out x in) matrix."""
    rows, cols = shape
    left = torch.empty(rows, len(pairs) * rank, dtype=torch.float32, device=device)
    right = torch.empty(cols, len(pairs) * rank, dtype=torch.float32, device=device)
    a = torch.empty(rows, rank, dtype=torch.float32, device=device)
    b = torch.empty(cols, rank, dtype=torch.float32, device=device)
    for i, (seed, coeff) in enumerate(pairs):
        factors(seed, name, shape, rank, device, out=(a, b))
        left[:, i * rank : (i + 1) * rank] = a * (coeff / math.sqrt(rank))
        right[:, i * rank : (i + 1) * rank] = b
    return left @ right.t()
