"""The engine pool's errors: a dead engine is named, a placement Ray cannot satisfy names the resources."""

import time

import psutil
import pytest

from engines.pool import EngineDiedError, EnginePool
from esvllm.config import RunConfig
from tests.helpers import engine_options
from tests.conftest import start_pool


def test_a_call_to_a_dead_engine_names_it(ray_session, tiny_model):
    import ray

    pool = start_pool(tiny_model, num_engines=1, backend="fake")
    engine = pool.engines[0]
    try:
        ray.kill(engine.actor)
        # ray.kill only asks: a call sent at once can still be served. Wait for the process to be gone.
        wait_until_exited(engine.info["pid"], timeout_s=30)
        with pytest.raises(EngineDiedError, match=f"engine 0 \\(pid {engine.info['pid']}\\) died"):
            engine.checksum()
    finally:
        pool.shutdown()


def wait_until_exited(pid: int, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"engine process {pid} still running {timeout_s} s after ray.kill")


def test_a_placement_ray_cannot_satisfy_fails_with_the_clusters_resources(ray_session, tiny_model, monkeypatch):
    import engines.pool

    monkeypatch.setattr(engines.pool, "PLACEMENT_TIMEOUT_S", 2)
    # The session's Ray has no GPU: a bundle asking for one can never be placed.
    with pytest.raises(RuntimeError, match="could not place 3 engine.*GPU.*cluster has"):
        EnginePool.start(tiny_model, engine_options(RunConfig(device="cuda", cuda_devices="0,1,2")))
