"""What every engine actor shares: its description and the one-round-trip rollout."""

from __future__ import annotations

import os
import time


class EngineActorBase:
    """Subclasses set up a model, `self.info` (from the ES state) and implement `rpc` and `generate`."""

    info: dict

    def describe(self, index: int, started: float, **extra) -> None:
        import ray

        context = ray.get_runtime_context()
        self.info.update(index=index, pid=os.getpid(), start_s=time.perf_counter() - started,
                         node_id=context.get_node_id(), actor_name=context.get_actor_name(), **extra)

    def ready(self) -> dict:
        return self.info

    def rpc(self, method: str, *args):
        raise NotImplementedError

    def generate(self, prompts: list[str], sampling: dict) -> list[dict]:
        raise NotImplementedError

    def rollout(self, seed: int, sigma: float, prompts: list[str], sampling: dict) -> dict:
        """One population member in one round trip: perturb, then generate.

        No restore afterwards: the next perturb (or apply_update) writes every weight from the
        master anyway (and on vLLM's CPU backend each write costs a re-pack of the kernels).
        """
        t0 = time.perf_counter()
        self.rpc("perturb", seed, sigma)
        t1 = time.perf_counter()
        completions = self.generate(prompts, sampling)
        t2 = time.perf_counter()
        return {"completions": completions, "perturb_s": t1 - t0, "generate_s": t2 - t1}
