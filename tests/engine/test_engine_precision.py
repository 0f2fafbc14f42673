"""fp32 master accumulation in a bf16 engine, and the export round trip through transformers and vLLM."""

import pytest
import torch

from kernels import noise

from tests.conftest import start_local, start_pool


PROMPTS = ["12+7=", "Using the numbers [3, 5, 7]"]


@pytest.fixture(scope="module")
def bf16_engine(ray_session, tiny_model):
    pool = start_pool(tiny_model, num_engines=1, dtype="bfloat16")
    yield pool.engines[0]
    pool.shutdown()


def test_sub_ulp_updates_accumulate_in_the_fp32_master_of_a_bf16_engine(bf16_engine):
    name, seed, step = "model.layers.0.mlp.down_proj.weight", 77, 1e-5
    base = bf16_engine.master_weights([name])[name]
    for _ in range(100):
        bf16_engine.apply_update([(seed, step)])
    master = bf16_engine.master_weights([name])[name]
    eps = noise(seed, name, base.shape)
    # 100 x 1e-5 adds up to 1e-3 * eps within fp32 rounding (100 adds, <= 1 ulp of 0.05 each).
    torch.testing.assert_close(master - base, 1e-3 * eps, rtol=0, atol=100 * 3.8e-9)
    # Where |w| >= 2**-5 half a bf16 ulp exceeds every step: naive bf16 accumulation loses them all ...
    big = base.abs() >= 2**-5
    assert big.sum() > 1000
    naive = base.bfloat16()
    for _ in range(100):
        naive = (naive.float() + step * eps).bfloat16()
    assert (naive[big] == base.bfloat16()[big]).float().mean() > 0.95
    # ... while the engine runs bf16(master), which has moved there.
    effective = bf16_engine.read_weights([name])[name]
    assert torch.equal(effective, master.bfloat16().float())
    assert (effective[big] != base.bfloat16().float()[big]).float().mean() > 0.5


def test_export_loads_in_transformers_with_the_engines_logits(engine_pair, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = engine_pair[0]
    engine.apply_update([(31, 2e-3)])  # a non-trivial state, not the checkpoint on disk
    engine_pair[1].apply_update([(31, 2e-3)])
    path = engine.export(str(tmp_path / "export"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    out = engine.generate(PROMPTS, {"temperature": 0.0, "max_tokens": 1, "logprobs": 5})
    for prompt, completion in zip(PROMPTS, out):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            hf = torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1)
        for token, logprob in completion["logprobs"][0].items():
            assert abs(hf[token].item() - logprob) < 1e-4, (prompt, token)


def test_export_loads_in_vllm_with_identical_weights(engine_pair, tmp_path):
    engine = engine_pair[0]
    path = engine.export(str(tmp_path / "export"))
    # The vLLM engine a user loads final/ into: in this process (what is checked is what vLLM loads).
    pool = start_local(path)
    reloaded = pool.engines[0]
    try:
        assert reloaded.checksum() == engine.checksum()
        greedy = {"temperature": 0.0, "max_tokens": 16}
        assert reloaded.generate(PROMPTS, greedy) == engine.generate(PROMPTS, greedy)
    finally:
        pool.shutdown()
