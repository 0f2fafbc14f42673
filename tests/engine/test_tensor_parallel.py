"""Tensor parallelism on CPU: one engine over two ranks (vLLM's mp executor, gloo) holds the one-rank
engine's weights and computes the one-rank run, bit for bit. These are Qwen2's (q/k/v biases sharded
too); the Llama 3, Qwen3 and Qwen3-MoE layouts are tests/engine/test_families.py's."""

import pytest
import torch

from esvllm.runlog import read_metrics

from tests.helpers import final_weights, run, same_weights, without_eval


def test_two_ranks_perturb_every_hf_tensor_to_the_one_rank_values(engine_pair, from_the_pair):
    one, two = engine_pair[0], from_the_pair.sharded  # only perturbed here: the pair stays in step
    assert one.master_checksum() == two.master_checksum()  # the same base
    try:
        assert two.info["ranks"] == 2
        assert (two.info["tensors"], two.info["parameters"]) == (one.info["tensors"], one.info["parameters"])
        for engine in (one, two):
            engine.perturb(4242, 0.02)
        a, b = one.read_weights(), two.read_weights()  # the ranks' shards assembled into HF tensors
        assert a.keys() == b.keys() and "model.layers.0.self_attn.q_proj.bias" in a
        assert [n for n in a if not torch.equal(a[n], b[n])] == []
        assert one.checksum() == two.checksum()
    finally:
        one.restore()
        two.restore()


def test_a_run_on_a_two_rank_engine_equals_the_one_rank_run(first_run, tmp_path):
    """Through the door a user takes, `--tensor_parallel_size 2`: every member's rewards, the served
    and master checksums after every update, and the final weights, as the one-rank run's."""
    sharded = run(tmp_path, "tp2", ["--num_engines", "1", "--tensor_parallel_size", "2"])
    records, reference = read_metrics(sharded), read_metrics(first_run)
    assert all(r["checksum"] and r["master_checksum"] for r in records)
    # The update norm is a float sum over shards: equal within rounding, not bit for bit.
    strip = lambda rs: [{k: v for k, v in r.items() if k != "update_norm"} for r in without_eval(rs)]
    assert strip(records) == strip(reference)
    assert [r["update_norm"] for r in records] == pytest.approx([r["update_norm"] for r in reference], rel=1e-6)
    assert same_weights(final_weights(sharded), final_weights(first_run))  # export assembles the shards
