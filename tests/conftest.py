"""Shared fixtures (the built tiny model, Ray, real vLLM CPU engines in Ray actors) and the tiers.

The tiers are folders: tests/unit (no Ray, no vLLM; `make test-fast`), tests/ray (fake engines in
Ray actors: whole runs, recovery, interrupts; `make test-ray`) and tests/engine (real vLLM CPU
engines, one test at a time). Each folder's tests get its mark (`ray`, `engine`), and a test that
starts more than its folder allows is an error, so a tier cannot quietly grow slower.
"""

from pathlib import Path

import pytest

from esvllm.models import resolve_model

TIERS = {"unit": None, "ray": pytest.mark.ray, "engine": pytest.mark.engine}
HERE = Path(__file__).parent


# The demo's model takes minutes to pre-train where it is not cached (as on CI). `make install` builds
# it beside pip (Makefile); the first test that needs it waits for that build, or builds it where none
# ran: it runs first, beside the others, and the other tests that need it run last, when it is there.
BUILDS_DEMO_MODEL = "ray/test_demo_model.py"


def run_order(item) -> int:
    if Path(item.fspath).relative_to(HERE).as_posix() == BUILDS_DEMO_MODEL:
        return 0
    return 2 if "demo_model" in item.fixturenames else 1


def pytest_collection_modifyitems(items):
    items.sort(key=run_order)  # stable: the order within each group stays the collection's
    for item in items:
        tier = Path(item.fspath).relative_to(HERE).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit, tests/ray or tests/engine")
        if tier == "unit" and "ray_session" in item.fixturenames:
            raise pytest.UsageError(f"{item.nodeid} starts Ray: it belongs in tests/ray or tests/engine")
        if TIERS[tier] is not None:
            item.add_marker(TIERS[tier])


@pytest.fixture(params=("avx2", "portable", "torch"))
def cpu_kernel(request, monkeypatch):
    """Each CPU kernel level this processor runs, and the torch reference: the test runs with each."""
    from kernels import cpu, cpu_lib

    level = request.param
    if level == cpu.REFERENCE:
        chosen = cpu.Kernel(level, None)
    else:
        compiler = cpu_lib.find_compiler()
        if compiler is None or level not in cpu_lib.supported_levels(compiler):
            pytest.skip(f"this machine does not run the {level} CPU kernel")
        chosen = cpu.Kernel(level, cpu_lib.build(compiler, level))
    monkeypatch.setattr(cpu, "kernel", lambda: chosen)
    return level


@pytest.fixture(scope="session")
def tiny_model() -> str:
    return resolve_model("tiny")


@pytest.fixture(scope="session")
def demo_model() -> str:
    """The demo's base model, `adder` (experiments/demo.toml), built on first use."""
    return resolve_model("adder")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from engines.ray_node import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def start_pool(model, **overrides):
    from engines.pool import EnginePool

    from tests.helpers import engine_options

    return EnginePool.start(model, engine_options(**overrides))


def start_local(model, **overrides):
    """One engine in this process (`--in_process`), for what does not depend on the process it runs in."""
    from engines.local import LocalPool

    from tests.helpers import engine_options

    return LocalPool.start(model, engine_options(in_process=True, **overrides))


def start_pools_at_once(model, kinds: dict[str, dict]) -> dict:
    """One one-engine pool per kind (its start_pool overrides), started at once: their start-ups overlap."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(kinds)) as starting:
        futures = {kind: starting.submit(start_pool, model, num_engines=1, **options) for kind, options in kinds.items()}
        return {kind: future.result() for kind, future in futures.items()}


@pytest.fixture(scope="session")
def engine_pair(ray_session, tiny_model):
    """Two fp32 tiny engines, one per core, shared by the session: a test that changes their weights
    changes both alike, so they stay in step. They keep their members' noise (--noise_cache_mb), so
    the engine tests cover that path too."""
    pool = start_pool(tiny_model, num_engines=2, noise_cache_mb=64)
    yield pool.engines
    pool.shutdown()


@pytest.fixture(scope="session")
def from_the_pair(engine_pair, tmp_path_factory):
    """Two engines started from the session pair's current base weights at once (their start-ups
    overlap): one rank with four LoRA slots of rank 2 (tests/engine/test_lowrank.py) and two ranks
    (tests/engine/test_tensor_parallel.py). Their users check that they are still in step with the pair."""
    import types

    base = engine_pair[0].export(str(tmp_path_factory.mktemp("pair") / "base"))
    pools = start_pools_at_once(base, {"lowrank": {"lowrank_slots": 4, "lowrank_rank": 2},
                                       "sharded": {"tensor_parallel_size": 2}})
    yield types.SimpleNamespace(**{kind: pool.engines[0] for kind, pool in pools.items()})
    for pool in pools.values():
        pool.shutdown()


@pytest.fixture(scope="session")
def first_run(ray_session, tmp_path_factory):
    """The reference run (tests.helpers.ARGS plus checkpoints, eval and best-model export)."""
    from .helpers import EXTRAS, run

    return run(tmp_path_factory.mktemp("runs"), "a", EXTRAS)
