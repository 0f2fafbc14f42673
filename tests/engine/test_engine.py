"""The engine verbs on real vLLM CPU engines in Ray actors, checked against independent computations.

Expected weights are computed here from the engine's base weights at the start of each test and
`kernels`; the engine's weights are read back through its own compute kernels (`read_weights`),
so vLLM's repacked linear layers cannot escape. Tests may run in any order: each one that changes
the base weights changes both engines of the pair alike, so they are in step for the next.
"""

import pytest
import torch
from safetensors.torch import load_file

from kernels import noise


GREEDY = {"temperature": 0.0, "max_tokens": 24}
PROMPTS = ["12+7=", "hello world", "Using the numbers [3, 5, 7], create an equation", "abc"]


@pytest.fixture(scope="module")
def checkpoint(tiny_model):
    return load_file(f"{tiny_model}/model.safetensors")


def in_step(a, b):
    assert a.master_checksum() == b.master_checksum(), "the pair is out of step"


def texts(engine):
    return [c["text"] for c in engine.generate(PROMPTS, GREEDY)]


def test_the_cpu_backend_really_packs_the_fused_linears(engine_pair):
    # Guards the trap in VLLM_CPU.md: these weights exist only inside packed kernels.
    removed = set(engine_pair[0].info["removed"])
    for layer in range(2):
        assert f"model.layers.{layer}.self_attn.qkv_proj.weight" in removed
        assert f"model.layers.{layer}.mlp.gate_up_proj.weight" in removed


def test_every_hf_tensor_equals_base_plus_sigma_eps_after_perturb(engine_pair, checkpoint):
    engine = engine_pair[0]
    sigma, seed = 0.01, 424242
    base_weights = engine.master_weights()
    done = engine.perturb(seed, sigma)
    assert (done["tensors"], done["parameters"]) == (engine.info["tensors"], engine.info["parameters"])
    try:
        effective = engine.read_weights()
    finally:
        engine.restore()
    assert set(effective) == set(checkpoint)  # every HF tensor, q/k/v and gate/up included
    for name, base in base_weights.items():
        expected = base + sigma * noise(seed, name, base.shape)
        # Within one fp32 rounding of the fused multiply-add.
        torch.testing.assert_close(effective[name], expected, rtol=2e-7, atol=1e-8, msg=lambda m: f"{name}: {m}")
        moved = (effective[name] != base).float().mean()
        assert moved > 0.99, f"{name}: only {moved:.1%} of elements moved"


def test_perturbing_changes_greedy_generations(engine_pair):
    engine = engine_pair[0]
    before = texts(engine)
    engine.perturb(99, 0.05)
    try:
        perturbed = texts(engine)
    finally:
        engine.restore()
    assert perturbed != before


def test_restore_is_bit_exact_after_100_perturb_restore_cycles(engine_pair):
    engine = engine_pair[1]
    weights_before, text_before = engine.read_weights(), texts(engine)
    for seed in range(100):
        engine.perturb(seed, 0.01)
        engine.restore()
    weights_after = engine.read_weights()
    for name in weights_before:
        assert torch.equal(weights_after[name], weights_before[name]), name
    assert texts(engine) == text_before


def test_apply_update_equals_an_independent_fp32_sum(engine_pair):
    engine = engine_pair[0]
    in_step(*engine_pair)
    pairs = [(11, 3e-3), (12, -1e-3), (2**31 - 1, 5e-4)]
    base = engine.master_weights()
    try:
        engine.apply_update(pairs)
    finally:
        engine_pair[1].apply_update(pairs)  # keep the pair in step for the other tests
    master, effective = engine.master_weights(), engine.read_weights()
    for name, b in base.items():
        expected = b.clone()
        for seed, coeff in pairs:
            expected += coeff * noise(seed, name, b.shape)
        torch.testing.assert_close(master[name], expected, rtol=4e-7, atol=1e-8, msg=lambda m: f"{name}: {m}")
        assert torch.equal(effective[name], master[name]), name  # fp32 engine runs the master


def test_two_engines_with_the_same_updates_agree_and_an_extra_update_splits_them(engine_pair):
    a, b = engine_pair
    in_step(a, b)
    for engine in (a, b):
        engine.apply_update([(5, 1e-3), (6, -2e-3)])
    assert a.checksum() == b.checksum()
    try:
        a.apply_update([(7, 1e-4)])
        assert a.checksum() != b.checksum()
    finally:
        b.apply_update([(7, 1e-4)])
    assert a.checksum() == b.checksum()


def test_an_update_reusing_this_engines_own_noise_equals_one_that_draws_it_again(engine_pair):
    a, b = engine_pair
    in_step(a, b)
    pairs = [(21, 2e-3), (22, -1e-3), (23, 4e-4)]
    base = a.master_weights()
    for seed, _ in pairs[:2]:  # engine a evaluates members 21 and 22 and keeps their noise
        a.perturb(seed, 0.01)
    reused = [a.apply_update(pairs)["noise_reused"], b.apply_update(pairs)["noise_reused"]]
    assert reused == [2, 0]  # b draws all three again
    assert a.checksum() == b.checksum()  # bit-identical: the engines stay in step
    master = a.master_weights()
    for name, w in base.items():
        expected = w + sum(coeff * noise(seed, name, w.shape) for seed, coeff in pairs)
        torch.testing.assert_close(master[name], expected, rtol=4e-7, atol=1e-8, msg=lambda m: f"{name}: {m}")


def test_the_served_checksum_sees_a_perturbation_and_restore_reports_the_base_checksums(engine_pair):
    engine = engine_pair[0]
    base = engine.checksum()
    assert base["served"] == base["master"]  # an fp32 engine serves its master's bits
    engine.perturb(3, 0.01)
    perturbed = engine.checksum()
    assert perturbed["served"] != base["served"] and perturbed["master"] == base["master"]
    assert engine.restore() == base


def test_one_wrong_element_inside_a_packed_kernel_is_seen_by_the_served_checksum(engine_pair):
    a, b = engine_pair
    in_step(a, b)
    name = "model.layers.0.mlp.gate_proj.weight"  # lives only inside the packed gate_up_proj kernel

    def write_one_wrong_element(worker):  # sent to the worker: a kernel that wrote one value wrong
        def write(hf_name, master, dst):
            dst.copy_(master)
            if hf_name == name:
                dst.view(-1)[5] += 0.01

        worker._write_all(write)

    assert a.checksum() == b.checksum()
    a.call("rpc", write_one_wrong_element)
    try:
        wrong, right = a.checksum(), b.checksum()
        assert wrong["master"] == right["master"]  # the masters agree: a master checksum cannot see it
        assert wrong["served"] != right["served"]
    finally:
        a.restore()
    assert a.checksum() == b.checksum()


def test_the_engine_reports_the_kv_cache_vllm_allocated_and_no_cuda_graphs_on_cpu(engine_pair, tiny_model):
    # What the run compares with its memory plan (esvllm.memory.measured_shortfalls): read from vLLM,
    # checked against the KV cache the CPU options ask for, computed here from the model's shape.
    import json

    from engines.options import VLLM_MAX_NUM_SEQS

    cfg = json.loads(open(f"{tiny_model}/config.json").read())
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * 4  # K and V, fp32
    asked = max(64 * 2**20, per_token * 512 * VLLM_MAX_NUM_SEQS)  # the tests' max_model_len 512
    for engine in engine_pair:
        assert engine.info["kv_cache_tokens"] == asked // per_token  # 131,072 tokens: whole blocks
        assert engine.info["cuda_graph_bytes"] == 0  # enforce_eager: vLLM captures no graphs on CPU
