"""The ES variant (engines.variant): every member in exactly one job, in member order, and low-rank
batches that never exceed an engine's adapter slots, whatever the number of engines alive."""

import pytest

from engines.variant import Variant
from esvllm.config import RunConfig


def covered(jobs):
    """Member indices each job evaluates, from its first_member and size."""
    return [m for job in jobs for m in range(job.first_member, job.first_member + job.members)]


def sampling(seed):
    return {"seed": seed}


@pytest.mark.parametrize("population, antithetic, lowrank, engines, alive", [
    (6, False, False, 2, 2), (6, True, False, 2, 1), (8, False, True, 2, 2), (8, False, True, 2, 1),
    (7, False, True, 2, 2), (5, False, True, 3, 1)])
def test_every_member_is_in_exactly_one_job_in_order(population, antithetic, lowrank, engines, alive):
    variant = Variant(population=population, antithetic=antithetic, lowrank=lowrank, rank=4, engines=engines)
    seeds = list(range(100, 100 + (population // 2 if antithetic else population)))
    jobs, _ = variant.jobs(seeds, 0.01, ["p"], sampling, alive)
    assert covered(jobs) == list(range(population))
    assert len(variant.seeds_per_member(seeds)) == population
    if lowrank:
        slots = -(-population // engines)
        assert variant.lowrank_slots == slots and all(job.members <= slots for job in jobs)
        for job in jobs:  # each member's slot is 1..members of its batch
            assert [slot for _, slot in job.args[0]] == list(range(1, job.members + 1))


def test_with_fewer_engines_alive_low_rank_runs_more_rounds_not_bigger_batches():
    variant = Variant(population=8, lowrank=True, rank=2, engines=4)  # 2 slots per engine
    jobs, depth = variant.jobs(list(range(8)), 0.01, ["p"], sampling, engines_alive=1)
    assert [job.members for job in jobs] == [2, 2, 2, 2] and depth == 1


def test_the_variant_of_a_run_config_counts_engines_from_the_gpu_ids():
    config = RunConfig(population_size=32, perturbation="lowrank", rank=5, cuda_devices="0,1,2,3", device="cuda")
    variant = Variant.from_config(config)
    assert (variant.engines, variant.lowrank_slots, variant.lora_rank) == (4, 8, 8)  # vLLM allocates rank 8
    assert variant.plan_terms() == {"lora_slots": 8, "lora_rank": 8, "lowrank_members": 32, "lowrank_rank": 5}
    sharded = Variant.from_config(RunConfig(population_size=32, cuda_devices="0,1,2,3", tensor_parallel_size=2,
                                            device="cuda"))
    assert sharded.engines == 2 and sharded.plan_terms() == {} and sharded.lowrank_slots == 0
