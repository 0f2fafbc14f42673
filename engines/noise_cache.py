"""The noise of the members an engine perturbed since the last update, kept for that update (CPU).

On CPU a draw costs more than the add, so `apply_update` reads kept noise instead of drawing it again
(bit for bit the same values). Bounded by a byte budget (--noise_cache_mb); the buffers are reused
from one iteration to the next. An antithetic pair's draw is kept for its mirror (the same seed with
the other sign) even with no budget. On CUDA the fused kernels draw faster than a buffer could be
read back, so nothing is kept (`keeps=False`).
"""

from __future__ import annotations

import torch


class NoiseCache:
    def __init__(self, master: dict[str, torch.Tensor], budget_bytes: int, keeps: bool):
        self._offsets, self._total = {}, 0
        for name, tensor in master.items():
            self._offsets[name] = (self._total, self._total + tensor.numel())
            self._total += tensor.numel()
        self._device = next(iter(master.values())).device
        self._keeps = keeps
        self.slots = int(budget_bytes // (self._total * 4)) if keeps else 0
        self._cache: dict[int, torch.Tensor] = {}
        self._spare: list[torch.Tensor] = []
        self._mirror: tuple[int, torch.Tensor | None] = (-1, None)  # (seed, its noise) kept for a mirror

    def kept(self, seed: int) -> torch.Tensor | None:
        """The buffer holding member `seed`'s noise, if this engine drew it since the last update."""
        if seed in self._cache:
            return self._cache[seed]
        return self._mirror[1] if seed == self._mirror[0] else None

    def claim(self, mirror: bool = False) -> torch.Tensor | None:
        """A buffer to draw a new member's noise into, or None (budget spent, or nothing is kept).
        With `mirror`, the antithetic pair's buffer when the budget is spent."""
        if self._spare:
            return self._spare.pop()
        if len(self._cache) + len(self._spare) < self.slots:
            return torch.empty(self._total, dtype=torch.float32, device=self._device)
        if mirror and self._keeps:
            buffer = self._mirror[1]
            if buffer is None:
                buffer = torch.empty(self._total, dtype=torch.float32, device=self._device)
            self._mirror = (-1, buffer)
            return buffer
        return None

    def keep(self, seed: int, buffer: torch.Tensor) -> None:
        """`buffer` now holds member `seed`'s whole noise."""
        if buffer is self._mirror[1]:
            self._mirror = (seed, buffer)
        else:
            self._cache[seed] = buffer

    def discard(self, buffer: torch.Tensor) -> None:
        """A buffer whose draw did not finish: never read, reused for the next draw."""
        if buffer is not self._mirror[1]:
            self._spare.append(buffer)

    def part(self, buffer: torch.Tensor, name: str, shape) -> torch.Tensor:
        """Tensor `name`'s part of a member's noise buffer."""
        start, end = self._offsets[name]
        return buffer[start:end].view(shape)

    def reused(self, seeds) -> int:
        return sum(self.kept(seed) is not None for seed in seeds)

    def clear(self) -> None:
        """After an update: the next iteration's members have new seeds."""
        self._spare.extend(self._cache.values())
        self._cache.clear()
        self._mirror = (-1, self._mirror[1])
