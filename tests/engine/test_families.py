"""The Llama 3, Qwen3 and Qwen3-MoE families on real vLLM CPU engines (Qwen2 is tests/engine/test_engine.py,
test_tensor_parallel.py and test_lowrank.py): every HF tensor moves by sigma * eps and comes back
exactly on one rank and on two; the two ranks hold the one-rank weights bit for bit; each low-rank
member served as a LoRA adapter generates what the engine with W + sigma * E generates; and the exported model
generates in transformers and in a fresh (in-process) vLLM engine what the engine generates, its
files holding the master's tensors."""

import json
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engines.variant import lora_rank_for
from esvllm.memory import ModelShape
from esvllm.models import resolve_model
from kernels import noise
from tests.conftest import start_local, start_pools_at_once

PROMPTS = ["12+7=", "hello world", "Using the numbers [3, 5, 7]"]
GREEDY = {"temperature": 0.0, "max_tokens": 10}
SAMPLING = {**GREEDY, "logprobs": 1}
MEMBERS = [(1001, 1), (1002, 2), (1003, 3), (1004, 4)]  # (seed, LoRA slot)
SIGMA, RANK = 0.05, 2


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen3", "tiny-qwen3-moe"])
def family(request, ray_session):
    """A family's two engines, started at once (their start-ups overlap): one rank and two ranks, from
    the same checkpoint. The one-rank engine has LoRA slots (not for a MoE, refused in low-rank mode),
    so it serves each low-rank member both as an adapter and with the member's weights materialised.
    The tests below keep both on the same base weights: each restores what it perturbs or updates
    both alike; the export test, which updates the one-rank engine alone, comes last."""
    model = resolve_model(request.param)
    lowrank = "moe" not in request.param
    kinds = {"one": {"lowrank_slots": len(MEMBERS), "lowrank_rank": RANK} if lowrank else {},
             "sharded": {"tensor_parallel_size": 2}}
    pools = start_pools_at_once(model, kinds)
    yield types.SimpleNamespace(model=model, lowrank=lowrank, **{kind: pool.engines[0] for kind, pool in pools.items()})
    for pool in pools.values():
        pool.shutdown()


def test_every_hf_tensor_moves_by_sigma_eps_and_restores_exactly_on_one_and_two_ranks(family):
    for engine in (family.one, family.sharded):  # the two ranks' shards assembled into HF tensors
        moves_by_sigma_eps_and_restores_exactly(engine)


def moves_by_sigma_eps_and_restores_exactly(engine, sigma=0.01, seed=777):
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


def test_each_low_rank_member_generates_what_the_engine_with_its_weights_materialised_does(family):
    if not family.lowrank:
        pytest.skip("low-rank mode is refused for mixture-of-experts models before start (tests/unit/test_families.py)")
    engine = family.one
    base = engine.generate(PROMPTS, SAMPLING)
    batched = engine.call("rollout_lowrank", MEMBERS, SIGMA, RANK, PROMPTS, SAMPLING)["members"]  # as adapters
    for (seed, _), member in zip(MEMBERS, batched):
        engine.call("rpc", "perturb_lowrank", seed, SIGMA, RANK)  # W + sigma * A B^T / sqrt(r), materialised
        want = engine.generate(PROMPTS, SAMPLING)  # no adapter
        assert [c["text"] for c in member["completions"]] == [c["text"] for c in want], seed
        for got, expected in zip(member["completions"], want):
            for g, w in zip(got["logprobs"], expected["logprobs"]):
                token = next(iter(g))
                assert abs(g[token] - w[token]) < 1e-4
    assert any([c["text"] for c in m["completions"]] != [c["text"] for c in base] for m in batched)
    engine.restore()
    assert [c["text"] for c in engine.generate(PROMPTS, SAMPLING)] == [c["text"] for c in base]
    # The memory plan's LoRA term, embed_tokens' and lm_head's LoRA layers included, is what vLLM allocated.
    shape = ModelShape.from_config(json.loads((Path(family.model) / "config.json").read_text()))
    planned = len(MEMBERS) * lora_rank_for(RANK) * shape.lora_elements_per_slot_rank(1) * 4  # fp32 on CPU
    assert shape.embedding_lora and engine.call("rpc", "lora_buffer_bytes") == planned


def test_two_ranks_hold_the_one_rank_weights_bit_for_bit(family):
    one, two = family.one, family.sharded
    assert two.info["ranks"] == 2 and two.info["tensors"] == one.info["tensors"]
    assert [c["text"] for c in two.generate(PROMPTS, GREEDY)] == [c["text"] for c in one.generate(PROMPTS, GREEDY)]
    for engine in (one, two):
        engine.perturb(4242, 0.02)
    a, b = one.read_weights(), two.read_weights()  # the ranks' shards assembled into HF tensors
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a), [n for n in a if not torch.equal(a[n], b[n])]
    assert one.checksum() == two.checksum()
    pairs = [(7, 3e-3), (8, -2e-3)]
    for engine in (one, two):
        engine.apply_update(pairs)
    a, b = one.master_weights(), two.master_weights()
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_the_export_generates_in_transformers_and_a_fresh_vllm_engine_what_the_engine_generates(family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = family.one
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
    exported = {}  # the files' own tensors (transformers fuses a MoE's experts as it loads them)
    for file in Path(path).glob("*.safetensors"):
        exported.update(load_file(str(file)))
    assert exported.keys() == master.keys()
    assert all(torch.equal(exported[n], master[n]) for n in master)
    fresh = start_local(path)  # vLLM loading final/
    try:
        assert [c["text"] for c in fresh.engines[0].generate(PROMPTS, GREEDY)] == want
    finally:
        fresh.shutdown()


def test_experts_kept_in_another_layout_than_the_mapped_one_are_refused_at_start(monkeypatch):
    """What a MoE kernel backend with its own weight layout would do (on CPU: reading the packed
    experts as if they were stored plainly): caught against the checkpoint before any update."""
    import engines.moe_layout

    monkeypatch.setattr(engines.moe_layout.ExpertPacking, "unpack",
                        lambda self, param: param.reshape(self.shape[0] * self.shape[1], self.shape[2]))
    with pytest.raises(ValueError, match=r"experts\.0\.(gate|up|down)_proj\.weight is not where engines.moe_layout expects it"):
        start_local(resolve_model("tiny-qwen3-moe"))


def test_a_vllm_engine_stops_at_every_eos_of_a_llama_generation_config_as_the_hf_engine_does(tmp_path):
    """Llama 3 Instruct's conventions (no pad token, several EOS ids in generation_config.json): vLLM
    stops at the one the model generates first, and the HF backend generates the same completions.
    Both engines in this process: where vLLM stops does not depend on the process it runs in."""
    from tests.helpers import llama3_conventions

    prompts = ["Using the numbers [3, 5, 7]", "12+7="]
    model, _ = llama3_conventions(tmp_path, prompts[0])
    pool = start_local(model)
    try:
        served = pool.engines[0].generate(prompts, GREEDY)
    finally:
        pool.shutdown()
    assert served[0]["text"] == "" and served[0]["tokens"] == 1
    hf = start_local(model, backend="hf").engines[0]
    assert [{k: c[k] for k in ("text", "tokens")} for c in served] == hf.generate(prompts, GREEDY)


def test_every_mixtral_tensor_moves_by_sigma_eps_and_restores_exactly():
    """Mixtral's names for the same experts (block_sparse_moe.experts.<e>.w1/w3/w2), on one in-process
    engine (the expert map and its sharding are tiny-qwen3-moe's, tested above through Ray actors)."""
    pool = start_local(resolve_model("tiny-mixtral"))
    try:
        moves_by_sigma_eps_and_restores_exactly(pool.engines[0])
        assert any(".block_sparse_moe.experts.3.w3." in n for n in pool.engines[0].master_weights())
    finally:
        pool.shutdown()


def test_a_qwen3_moe_run_ends_at_base_plus_the_logged_updates_for_every_expert(tmp_path):
    """The whole loop on a MoE (one in-process vLLM engine): every iteration's sync check reads the
    served experts through the packed kernel, and final/ is the ES definition recomputed here from
    the logged seeds and rewards, every expert tensor included."""
    import statistics

    from esvllm.run import main
    from esvllm.runlog import read_metrics

    model = resolve_model("tiny-qwen3-moe")
    run = main(["--model_name", "tiny-qwen3-moe", "--task", "conciseness", "--in_process", "--population_size", "4",
                "--num_iterations", "2", "--sigma", "0.05", "--alpha", "0.01", "--data_sample", "6", "--test_size", "4",
                "--max_tokens", "12", "--max_model_len", "128", "--global_seed", "3", "--output_dir", str(tmp_path)])
    base, final = load_file(f"{model}/model.safetensors"), load_file(str(run / "final" / "model.safetensors"))
    records = read_metrics(run)
    assert all(len(set(r["rewards"])) > 1 for r in records)  # members differed: the update moved
    for name, expected in base.items():
        expected = expected.clone()
        for record in records:  # z-scores of the logged rewards, alpha / N
            rewards = record["rewards"]
            mean, std = statistics.fmean(rewards), statistics.pstdev(rewards)
            for seed, reward in zip(record["seeds"], rewards):
                expected += 0.01 / len(rewards) * (reward - mean) / std * noise(seed, name, expected.shape)
        torch.testing.assert_close(final[name], expected, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")
    assert any(".mlp.experts.3.down_proj." in name for name in final)
