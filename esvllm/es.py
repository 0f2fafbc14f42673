"""ES math as pure functions: the seed schedule, reward shaping and the update coefficients.

Paper (arXiv 2509.24372, Algorithm 1): with rewards R_1..R_N of the perturbed models
θ + σ·ε_n, the update is θ ← θ + α/N · Σ_n Z_n · ε_n, where Z_n = (R_n - mean(R)) / std(R).
The coordinator sends only the pairs (seed_n, α/N · Z_n); each engine regenerates ε_n itself.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

from esvllm.noise import MAX_SEED

STD_EPSILON = 1e-8


def member_seeds(global_seed: int, iteration: int, population_size: int) -> list[int]:
    """The N member seeds of one iteration: distinct, over the full 31-bit range, recomputable.

    Each is a hash of (global_seed, iteration, member index, attempt); a rare collision within the
    population is redrawn so no two members share noise.
    """
    seeds: list[int] = []
    for index in range(population_size):
        attempt = 0
        while True:
            text = f"{global_seed}/{iteration}/{index}/{attempt}".encode()
            seed = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") % (MAX_SEED + 1)
            if seed not in seeds:
                break
            attempt += 1
        seeds.append(seed)
    return seeds


def zscore(rewards: Sequence[float], epsilon: float = STD_EPSILON) -> list[float]:
    """(R - mean) / std over the population (population std). All-equal rewards give zeros, not NaN."""
    if not rewards:
        raise ValueError("zscore of an empty population")
    if not all(math.isfinite(r) for r in rewards):
        raise ValueError(f"non-finite reward in {list(rewards)}")
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    if std < epsilon:
        return [0.0] * len(rewards)
    return [(r - mean) / std for r in rewards]


def update_coefficients(rewards: Sequence[float], alpha: float) -> list[float]:
    """α/N · Z_n for each member: the weight of ε_n in the update."""
    return [alpha / len(rewards) * z for z in zscore(rewards)]
