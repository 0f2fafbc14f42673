"""The Llama 3 and Qwen3 families on real vLLM CPU engines (Qwen2 is tests/engine/test_engine.py):
every HF tensor moves by sigma * eps and comes back exactly, and the exported model generates in
transformers what the engine generates."""

import pytest
import torch

from esvllm.models import resolve_model
from kernels import noise
from tests.conftest import start_pool

PROMPTS = ["12+7=", "hello world", "Using the numbers [3, 5, 7]"]
GREEDY = {"temperature": 0.0, "max_tokens": 10}


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen3"])
def family_engine(request, ray_session):
    pool = start_pool(resolve_model(request.param), num_engines=1)
    yield pool.engines[0]
    pool.shutdown()


def test_every_hf_tensor_moves_by_sigma_eps_and_restores_exactly(family_engine):
    engine, sigma, seed = family_engine, 0.01, 777
    base = engine.master_weights()
    engine.perturb(seed, sigma)
    try:
        perturbed = engine.read_weights()  # through vLLM's packed kernels
    finally:
        restored = engine.restore()
    assert perturbed.keys() == base.keys()
    for name, weight in base.items():
        expected = weight + sigma * noise(seed, name, weight.shape)
        torch.testing.assert_close(perturbed[name], expected, rtol=2e-7, atol=1e-8, msg=lambda m: f"{name}: {m}")
        assert (perturbed[name] != weight).float().mean() > 0.99, name
    after = engine.read_weights()
    assert all(torch.equal(after[n], base[n]) for n in base)
    assert restored["served"] == restored["master"]  # an fp32 engine serves its master's bits again


def test_the_export_generates_in_transformers_what_the_engine_generates(family_engine, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = family_engine
    engine.apply_update([(5, 2e-2), (6, -1e-2)])
    want = [c["text"] for c in engine.generate(PROMPTS, GREEDY)]
    path = engine.export(str(tmp_path / "final"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    got = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=GREEDY["max_tokens"], do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        got.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    assert got == want
    master = engine.master_weights()
    exported = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
    assert all(torch.equal(exported[n], master[n]) for n in master)
