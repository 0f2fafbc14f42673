"""What every engine actor shares: its description and the one-round-trip rollout."""

from __future__ import annotations

import os
import sys
import time


class EngineActorBase:
    """Subclasses set up a model, `self.info` (from the ES state) and implement `rpc` (the other ES
    verbs, by name, for the coordinator's handle), `perturb`, `perturb_lowrank` and `generate`."""

    info: dict

    def describe(self, index: int, started: float, **extra) -> None:
        ray = sys.modules.get("ray")  # an actor's process has it; an in-process engine (engines.local) may not
        context = ray.get_runtime_context() if ray is not None and ray.is_initialized() else None
        self.info.update(index=index, pid=os.getpid(), start_s=time.perf_counter() - started,
                         node_id=context.get_node_id() if context else None,
                         actor_name=context.get_actor_name() if context else None, **extra)

    def ready(self) -> dict:
        return self.info

    def rpc(self, method: str, *args):
        raise NotImplementedError

    def generate(self, prompts: list[str], sampling: dict) -> list[dict]:
        raise NotImplementedError

    def perturb(self, seed: int, sigma: float, sign: int = 1, mirror: bool = False) -> dict:
        """weights := base + sign * sigma * eps(seed) (engines.es_state.ESState.perturb)."""
        raise NotImplementedError

    def perturb_lowrank(self, seed: int, sigma: float, rank: int) -> dict:
        """The dense form of a low-rank member (engines.es_state.ESState.perturb_lowrank)."""
        raise NotImplementedError

    def rollout(self, seed: int, sigma: float, prompts: list[str], sampling: dict, sign: int = 1,
                mirror: bool = False, mini_batch: int | None = None) -> dict:
        """One population member in one round trip: {"members": [its completions and timings]}."""
        return {"members": [self._member(seed, sigma, prompts, sampling, sign, mirror, mini_batch)]}

    def _member(self, seed: int, sigma: float, prompts: list[str], sampling: dict, sign: int = 1,
                mirror: bool = False, mini_batch: int | None = None) -> dict:
        """Perturb, then generate.

        No restore afterwards: the next perturb (or apply_update) writes every weight from the
        master anyway (and on vLLM's CPU backend each write costs a re-pack of the kernels).
        `mini_batch` splits the prompts into several generate calls (less memory at once)."""
        t0 = time.perf_counter()
        self.perturb(seed, sigma, sign, mirror)
        t1 = time.perf_counter()
        step = mini_batch or len(prompts) or 1
        completions = [c for i in range(0, len(prompts), step) for c in self.generate(prompts[i : i + step], sampling)]
        t2 = time.perf_counter()
        return {"completions": completions, "perturb_s": t1 - t0, "generate_s": t2 - t1}

    def rollout_lowrank(self, members: list[tuple[int, int]], sigma: float, rank: int, prompts: list[str],
                        sampling: dict) -> dict:
        """Low-rank members (seed, slot id), one after another with dense weights W + sigma*E_i (the
        reference form; the vLLM engine serves them all in one batch as LoRA adapters)."""
        results = []
        for seed, _ in members:
            t0 = time.perf_counter()
            self.perturb_lowrank(seed, sigma, rank)
            t1 = time.perf_counter()
            completions = self.generate(prompts, sampling)
            results.append({"completions": completions, "perturb_s": t1 - t0, "generate_s": time.perf_counter() - t1})
        return {"members": results}

    def rollout_pair(self, seed: int, sigma: float, prompts: list[str], sampling: dict,
                     mini_batch: int | None = None) -> dict:
        """An antithetic pair on this engine: +sigma*eps, then -sigma*eps from the same draw."""
        return {"members": [self._member(seed, sigma, prompts, sampling, 1, True, mini_batch),
                            self._member(seed, sigma, prompts, sampling, -1, False, mini_batch)]}
