"""Low-rank mode: every member of a population served at once as a LoRA adapter equals an engine
whose weights are W + sigma * E_i (materialised here), and the update is the full-rank sum."""

import math

import pytest
import torch

from kernels.lowrank import factors
from esvllm.runlog import read_metrics

from tests.helpers import final_weights, run, same_weights, without_eval

PROMPTS = ["12+7=", "hello world", "abc", "Using the numbers [3, 5, 7]"]
SAMPLING = {"temperature": 0.0, "max_tokens": 10, "logprobs": 1}
MEMBERS = [(1001, 1), (1002, 2), (1003, 3), (1004, 4)]
SIGMA, RANK = 0.05, 2


@pytest.fixture(scope="module")
def lowrank_and_dense(engine_pair, from_the_pair):
    """A low-rank engine (4 slots, rank RANK) started from the base weights of the session's first
    engine (the dense one), and that engine."""
    dense, lowrank = engine_pair[0], from_the_pair.lowrank
    assert lowrank.master_checksum() == dense.master_checksum()  # the same base
    yield lowrank, dense
    dense.restore()


def test_each_batched_member_equals_a_dense_engine_with_its_perturbed_weights(lowrank_and_dense):
    lowrank, dense = lowrank_and_dense
    base = dense.generate(PROMPTS, SAMPLING)
    batched = lowrank.call("rollout_lowrank", MEMBERS, SIGMA, RANK, PROMPTS, SAMPLING)["members"]
    assert lowrank.call("rpc", "lowrank_layout") == [1, 2, 3, 4]  # members stayed in their slots
    for (seed, _), member in zip(MEMBERS, batched):
        dense.call("rpc", "perturb_lowrank", seed, SIGMA, RANK)  # W + sigma * A B^T / sqrt(r), materialised
        want = dense.generate(PROMPTS, SAMPLING)
        assert [c["text"] for c in member["completions"]] == [c["text"] for c in want]
        for got, expected in zip(member["completions"], want):
            for g, w in zip(got["logprobs"], expected["logprobs"]):
                token = next(iter(g))
                assert abs(g[token] - w[token]) < 1e-4
        assert [c["text"] for c in member["completions"]] != [c["text"] for c in base]
    dense.restore()


def test_an_update_adds_the_full_rank_sum_of_the_members_low_rank_noise(lowrank_and_dense, tiny_model):
    lowrank, _ = lowrank_and_dense
    pairs = [(1001, 0.02), (1002, -0.01), (1003, 0.005)]
    base = lowrank.master_weights()
    lowrank.apply_update(pairs, {"perturbation": "lowrank", "rank": RANK})
    master = lowrank.master_weights()
    for name, weight in base.items():
        if name.endswith("_proj.weight"):
            expected = weight.double() + sum(c * (lambda ab: ab[0].double() @ ab[1].double().t())(
                factors(s, name, tuple(weight.shape), RANK)) for s, c in pairs) / math.sqrt(RANK)
            torch.testing.assert_close(master[name].double(), expected, rtol=1e-5, atol=1e-7)
        else:  # embeddings, norms, biases: low-rank mode leaves them at the base
            assert torch.equal(master[name], weight), name


def test_a_low_rank_run_on_vllm_equals_the_same_run_on_dense_engines(tmp_path):
    # One engine each, in this process: what is compared is the engines' arithmetic (how members are
    # spread over engines in low-rank mode is tests/ray/test_recovery.py's, with engines dying).
    lowrank = ["--perturbation", "lowrank", "--rank", "2", "--num_engines", "1", "--in_process"]
    served = run(tmp_path, "lora", lowrank)  # all members as LoRA adapters, one batch
    dense = run(tmp_path, "dense", [*lowrank, "--engine", "hf"])  # the reference: W + sigma*E_i, one by one
    assert without_eval(read_metrics(served)) == without_eval(read_metrics(dense))
    assert same_weights(final_weights(served), final_weights(dense))


def test_the_memory_plans_lora_term_is_the_bytes_of_the_engines_lora_buffers(lowrank_and_dense, tiny_model):
    import json
    from pathlib import Path

    from engines.variant import lora_rank_for
    from esvllm.memory import ModelShape

    lowrank, _ = lowrank_and_dense
    shape = ModelShape.from_config(json.loads((Path(tiny_model) / "config.json").read_text()))
    planned = 4 * lora_rank_for(RANK) * shape.lora_elements_per_slot_rank(1) * 4  # 4 slots, fp32 on CPU
    assert lowrank.call("rpc", "lora_buffer_bytes") == planned
