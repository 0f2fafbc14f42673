"""Shared fixtures: the built tiny model and real vLLM CPU engines in Ray actors."""

import pytest

from esvllm.models import resolve_model


def pytest_collection_modifyitems(items):
    # Starting Ray and its actors takes seconds per test on two cores: such tests are not the fast tier.
    for item in items:
        if "ray_session" in item.fixturenames:
            item.add_marker(pytest.mark.ray)


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
def ray_session():
    import ray

    from engines.ray_node import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def start_pool(model, **options):
    from engines.pool import EngineOptions, EnginePool

    return EnginePool.start(model, EngineOptions(**options))


@pytest.fixture(scope="session")
def engine_pair(ray_session, tiny_model):
    """Two fp32 tiny engines, one per core, shared by the session: tests keep them in step."""
    pool = start_pool(tiny_model, num_engines=2)
    yield pool.engines
    pool.shutdown()


@pytest.fixture(scope="module")
def fresh_pair(ray_session, tiny_model):
    """Two fp32 tiny engines still at the checkpoint's weights when the module starts.

    They keep their members' noise (--noise_cache_mb), so the engine tests cover that path too."""
    pool = start_pool(tiny_model, num_engines=2, noise_cache_mb=64)
    yield pool.engines
    pool.shutdown()


@pytest.fixture(scope="session")
def first_run(ray_session, tmp_path_factory):
    """The reference run (tests.helpers.ARGS plus checkpoints, eval and best-model export)."""
    from .helpers import EXTRAS, run

    return run(tmp_path_factory.mktemp("runs"), "a", EXTRAS)
