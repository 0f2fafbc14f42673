"""The ES variant of a run, in one object: how members become engine jobs, how their results come
back, how the update is applied and what the memory plan counts.

    full rank    a job per member: perturb to base + sigma * eps, generate (the paper's)
    antithetic   a job per mirrored pair: +sigma * eps, then -sigma * eps from the same draw, one engine
    low rank     one batch of members per engine (EGGROLL): each member an adapter in its own LoRA slot

`Variant.from_config` builds it once from a validated run config; the coordinator, the fleet, the
engine options and the memory plan read it, and nothing else decides these things. The update's
settings travel as `UpdateOptions` (into the update log as a dict, back with the same defaults).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from engines.actor_base import EngineActorBase

# Jobs queued per engine: the next one starts the moment the last finishes, without waiting for
# the coordinator's round trip; small, so a slow engine holds back at most one extra job.
PIPELINE_DEPTH = 2
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's LoRA layers allocate
OPTIMIZERS = ("sgd", "momentum", "adam")


def lora_rank_for(rank: int) -> int:
    """vLLM's smallest LoRA rank that holds `rank` (the rest of each slot stays zero)."""
    return next(r for r in LORA_RANKS if r >= rank)


@dataclasses.dataclass(frozen=True)
class UpdateOptions:
    """How every engine applies one update's (seed, coefficient) pairs (engines.optimizer).

    sgd: the coefficients already hold alpha/N * f_i; with momentum or Adam they are f_i / N and
    `alpha` is the step size. Low-rank mode updates the block linears from the members' factors."""

    optimizer: str = "sgd"
    alpha: float = 1.0
    step: int = 1
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    perturbation: str = "full"
    rank: int = 1

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if self.perturbation not in ("full", "lowrank"):
            raise ValueError(f"perturbation {self.perturbation!r}: use full or lowrank")

    def to_log(self) -> dict:
        """The update log's record: only what differs from the defaults (the paper's step: {})."""
        default = UpdateOptions()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}

    @classmethod
    def from_log(cls, entry: "UpdateOptions | dict | None") -> "UpdateOptions":
        if isinstance(entry, UpdateOptions):
            return entry
        return cls(**(entry or {}))


@dataclasses.dataclass(frozen=True)
class Job:
    """One engine call of an iteration: `method(*args)` on an engine actor (an EngineActorBase
    method, named by the function itself), evaluating the members first_member .. first_member +
    members - 1. Every rollout method returns {"members": [...]}, one entry (completions, perturb_s,
    generate_s) per member, in order."""

    method: Callable
    args: tuple
    first_member: int
    members: int


@dataclasses.dataclass(frozen=True)
class Variant:
    population: int
    antithetic: bool = False
    lowrank: bool = False
    rank: int = 1
    engines: int = 1  # engines the run starts with: low-rank slots per engine are sized for them
    mini_batch_size: int | None = None

    @classmethod
    def from_config(cls, config) -> "Variant":
        gpus = config.gpu_ids
        engines = max(1, len(gpus) // config.tensor_parallel_size) if gpus else config.num_engines
        return cls(population=config.population_size, antithetic=config.antithetic,
                   lowrank=config.perturbation == "lowrank", rank=config.rank, engines=engines,
                   mini_batch_size=config.mini_batch_size)

    @property
    def lowrank_slots(self) -> int:
        """Low-rank mode: members an engine serves at once, one LoRA slot each (0: full rank)."""
        return -(-self.population // self.engines) if self.lowrank else 0

    @property
    def lora_rank(self) -> int:
        return lora_rank_for(self.rank) if self.lowrank else 0

    def seeds_per_member(self, seeds: list[int]) -> list[int]:
        """The noise seed of each member, in member order (a mirrored pair shares one)."""
        return [s for s in seeds for _ in range(2 if self.antithetic else 1)]

    def jobs(self, seeds: list[int], sigma: float, prompts: list[str], sampling, engines_alive: int) -> tuple[list[Job], int]:
        """(jobs, jobs queued per engine) for an iteration's seeds (`sampling(seed)` gives a member's
        sampling parameters)."""
        mini = self.mini_batch_size
        if self.lowrank:
            # A batch never holds more members than an engine has adapter slots: with fewer engines
            # alive than the run started with, engines take more batches (rounds), not bigger ones.
            size = min(self.lowrank_slots, -(-len(seeds) // max(1, engines_alive)))
            chunks = [seeds[i : i + size] for i in range(0, len(seeds), size)]
            members = [[(s, k + 1) for k, s in enumerate(chunk)] for chunk in chunks]  # (seed, its LoRA slot)
            return [Job(EngineActorBase.rollout_lowrank, (batch, sigma, self.rank, prompts, sampling(chunk[0])),
                        i * size, len(chunk)) for i, (chunk, batch) in enumerate(zip(chunks, members))], 1
        if self.antithetic:
            return [Job(EngineActorBase.rollout_pair, (s, sigma, prompts, sampling(s), mini), 2 * i, 2)
                    for i, s in enumerate(seeds)], PIPELINE_DEPTH
        return [Job(EngineActorBase.rollout, (s, sigma, prompts, sampling(s), 1, False, mini), i, 1)
                for i, s in enumerate(seeds)], PIPELINE_DEPTH

    def update_options(self, options: UpdateOptions) -> UpdateOptions:
        """The iteration's update settings with this variant's own (low-rank: the factors' rank)."""
        if not self.lowrank:
            return options
        return dataclasses.replace(options, perturbation="lowrank", rank=self.rank)

    def plan_terms(self) -> dict:
        """What the memory plan (esvllm.memory.plan) counts for this variant."""
        if not self.lowrank:
            return {}
        return {"lora_slots": self.lowrank_slots, "lora_rank": self.lora_rank,
                "lowrank_members": self.population, "lowrank_rank": self.rank}
