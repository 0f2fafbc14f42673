"""The one definition of ES noise: eps(seed, tensor name) ~ N(0, 1), i.i.d. per element.

Every process that needs a perturbation (each engine's worker, the tests, the coordinator when it
rebuilds weights from the update log) calls `fill_noise`, so the same (seed, name) gives the same
tensor everywhere on a given device type.

Why a hash: the earlier ES code seeded one generator per member and reused it across tensors (same-
shape tensors got identical noise) or seeded with `seed + tensor_index` (member s's tensor 1 equalled
member s+1's tensor 0). Here the generator seed is a 63-bit BLAKE2b digest of (seed, name), so every
(member, tensor) pair gets its own stream and no two pairs share one unless the hash collides.

Noise is defined per Hugging Face tensor name and full shape, so it is the same whatever vLLM fuses
(`qkv_proj`, `gate_up_proj`).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays out of the core's import path (`--help` must be instant)
    import torch

MAX_SEED = 2**31 - 1


def check_sigma(sigma) -> None:
    """sigma must be a finite number > 0 (checked before any engine call)."""
    import math

    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")


def stream_seed(seed: int, name: str) -> int:
    """The generator seed of tensor `name` for population member `seed`."""
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"noise seed {seed} is outside [0, 2**31-1]; draw seeds from that range")
    digest = hashlib.blake2b(f"{int(seed)}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def fill_noise(out: "torch.Tensor", seed: int, name: str) -> "torch.Tensor":
    """Overwrite `out` (float32, any device) with eps(seed, name) and return it.

    Writes into a caller-owned buffer so the hot loops allocate nothing per tensor.
    """
    import torch

    generator = torch.Generator(device=out.device)
    generator.manual_seed(stream_seed(seed, name))
    return out.normal_(generator=generator)


def noise(seed: int, name: str, shape, device="cpu") -> "torch.Tensor":
    """eps(seed, name) as a new float32 tensor of `shape` (for tests and one-off use)."""
    import torch

    return fill_noise(torch.empty(tuple(shape), dtype=torch.float32, device=device), seed, name)
