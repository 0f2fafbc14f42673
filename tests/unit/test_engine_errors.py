"""Bad input gets a clear error, before any RPC where possible; a dead engine is named."""

import math

import pytest

from engines.pool import EnginePool
from esvllm.config import RunConfig
from tests.helpers import engine_options
from esvllm.models import resolve_model



def test_a_missing_model_path_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        resolve_model(str(missing))
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        EnginePool.start(str(missing), engine_options())  # before Ray or vLLM start


@pytest.mark.parametrize("sigma", [0.0, -1e-3, math.nan, math.inf, -math.inf, "0.1", True])
def test_a_bad_sigma_is_refused_by_the_engines_perturb_before_any_weight_is_written(sigma):
    # Training reaches ESState.perturb through every rollout job; the config refuses --sigma first.
    import torch

    from engines.es_state import ESState

    master = {"w": torch.ones(3, 4)}
    weights = {"w": torch.zeros(3, 4)}
    state = ESState(master, lambda write: [write(n, t, weights[n]) for n, t in master.items()], None)
    with pytest.raises(ValueError, match="sigma"):
        state.perturb(1, sigma)
    assert torch.equal(weights["w"], torch.zeros(3, 4)) and state.perturbation is None


def test_engines_run_vllms_v1_model_runner_unless_the_user_opts_in(monkeypatch):
    # The V1 runner is the one every engine test here runs (the CPU build cannot run V2).
    from engines.options import actor_env

    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    on_gpus = engine_options(RunConfig(device="cuda", cuda_devices="0,1"))
    for options in (on_gpus, engine_options()):
        assert actor_env(options, 0)["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    assert actor_env(on_gpus, 0)["VLLM_USE_V2_MODEL_RUNNER"] == "1"
    assert actor_env(engine_options(), 0)["VLLM_CPU_OMP_THREADS_BIND"]  # its own cores
