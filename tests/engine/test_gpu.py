"""CUDA engines (run only where vLLM-CUDA and a GPU are present: `make test` selects them there)."""

import pytest
import torch
from safetensors.torch import load_file

from kernels import noise

from tests.conftest import start_pool

pytestmark = pytest.mark.gpu


def test_a_cuda_engine_moves_every_weight_to_base_plus_sigma_eps(ray_session, tiny_model):
    pool = start_pool(tiny_model, device="cuda", cuda_devices=[0], dtype="float32")
    try:
        engine = pool.engines[0]
        engine.perturb(11, 0.01)
        effective = engine.read_weights()
        for name, base in load_file(f"{tiny_model}/model.safetensors").items():
            if name not in effective:
                continue  # tied lm_head
            expected = base + 0.01 * noise(11, name, base.shape, device="cuda").cpu()
            torch.testing.assert_close(effective[name], expected, rtol=2e-7, atol=1e-8)
    finally:
        pool.shutdown()
