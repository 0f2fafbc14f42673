"""ES math as pure functions: the seed schedule, fitness shaping and the update coefficients.

Paper (arXiv 2509.24372, Algorithm 1): with rewards R_1..R_N of the perturbed models
θ + σ·ε_n, the update is θ ← θ + α/N · Σ_n Z_n · ε_n, where Z_n = (R_n - mean(R)) / std(R).
The coordinator sends only the pairs (seed_n, α/N · Z_n); each engine regenerates ε_n itself.

Fitness shaping is a registry of pure functions `rewards -> weights` (SHAPINGS); the paper's z-score
is the default. Every function is deterministic, including on ties.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable, Sequence

from engines.variant import UpdateOptions
from kernels import MAX_SEED

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


def _check(rewards: Sequence[float]) -> None:
    if not rewards:
        raise ValueError("fitness shaping of an empty population")
    if not all(math.isfinite(r) for r in rewards):
        raise ValueError(f"non-finite reward in {list(rewards)}")


def zscore(rewards: Sequence[float], epsilon: float = STD_EPSILON) -> list[float]:
    """(R - mean) / std over the population (population std). All-equal rewards give zeros, not NaN."""
    _check(rewards)
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    if std < epsilon:
        return [0.0] * len(rewards)
    return [(r - mean) / std for r in rewards]


def centered_rank(rewards: Sequence[float]) -> list[float]:
    """Ranks scaled to [-0.5, 0.5] (OpenAI-ES): rank / (N - 1) - 0.5, ranks 0..N-1 by reward.

    Tied rewards share the mean of their ranks, so equal rewards get equal weights whatever their
    order in the population.
    """
    _check(rewards)
    n = len(rewards)
    if n == 1:
        return [0.0]
    order = sorted(range(n), key=lambda i: rewards[i])
    ranks = [0.0] * n
    start = 0
    while start < n:
        end = start
        while end + 1 < n and rewards[order[end + 1]] == rewards[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2
        start = end + 1
    return [r / (n - 1) - 0.5 for r in ranks]


def centered(rewards: Sequence[float]) -> list[float]:
    """Raw rewards minus their mean (no scaling)."""
    _check(rewards)
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


SHAPINGS: dict[str, Callable[[Sequence[float]], list[float]]] = {
    "zscore": zscore,  # the paper's
    "centered_rank": centered_rank,
    "raw": centered,
}


def shape(rewards: Sequence[float], shaping: str = "zscore") -> list[float]:
    if shaping not in SHAPINGS:
        raise ValueError(f"shaping {shaping!r}: use one of {sorted(SHAPINGS)}")
    return SHAPINGS[shaping](rewards)


def antithetic_coefficients(shaped: Sequence[float], scale: float) -> list[float]:
    """Mirrored pairs (member 2k: +eps_k, member 2k+1: -eps_k): sum_i f_i eps_i = sum_k (f_2k - f_2k+1) eps_k,
    so pair k's coefficient is scale * (f_2k - f_2k+1) and its noise is drawn once."""
    if len(shaped) % 2:
        raise ValueError("antithetic pairs need an even population")
    return [scale * (shaped[2 * k] - shaped[2 * k + 1]) for k in range(len(shaped) // 2)]


SCHEDULES = ("constant", "linear", "cosine")


def scheduled(kind: str, start: float, final: float, iteration: int, total: int) -> float:
    """A value that goes from `start` (iteration 0) to `final` (the last iteration)."""
    if kind == "constant" or total <= 1:
        return start
    progress = min(iteration / (total - 1), 1.0)
    if kind == "linear":
        return start + (final - start) * progress
    if kind == "cosine":
        return final + (start - final) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"schedule {kind!r}: use one of {', '.join(SCHEDULES)}")


def ask(global_seed: int, iteration: int, population_size: int, antithetic: bool = False) -> list[int]:
    """The iteration's noise seeds: one per member, or one per mirrored pair of members."""
    return member_seeds(global_seed, iteration, population_size // 2 if antithetic else population_size)


def tell(rewards: Sequence[float], seeds: Sequence[int], alpha: float, *, shaping: str = "zscore",
         antithetic: bool = False, optimizer: str = "sgd", step: int = 1, weight_decay: float = 0.0,
         hyper: dict | None = None) -> tuple[list[tuple[int, float]], UpdateOptions]:
    """The update of one iteration: (seed, coefficient) pairs and the options engines apply them with.

    sgd, the paper's: coefficients alpha/N * f_i, and the engines add sum c_i eps_i. With an
    optimizer, coefficients are f_i / N (the gradient estimate in the paper's scaling, which folds
    1/sigma into alpha) and alpha is the optimizer's step size (options carry it and the step count)."""
    shaped = shape(rewards, shaping)
    scale = alpha / len(rewards) if optimizer == "sgd" else 1.0 / len(rewards)
    coefficients = antithetic_coefficients(shaped, scale) if antithetic else [scale * f for f in shaped]
    if optimizer == "sgd" and not weight_decay:
        return list(zip(seeds, coefficients)), UpdateOptions()
    return list(zip(seeds, coefficients)), UpdateOptions(optimizer=optimizer, alpha=alpha, step=step,
                                                         weight_decay=weight_decay, **(hyper or {}))


def optimizer_settings(config) -> dict:
    """The optimizer's hyper-parameters from a run config, as the update log records them."""
    if config.optimizer == "momentum":
        return {"momentum": config.momentum}
    if config.optimizer == "adam":
        return {"beta1": config.beta1, "beta2": config.beta2, "eps": config.adam_eps}
    return {}
