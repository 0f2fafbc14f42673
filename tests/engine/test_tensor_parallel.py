"""Tensor parallelism on CPU: a run on one engine over two ranks (vLLM's mp executor, gloo) computes
the one-rank run bit for bit. Each rank's share of every tensor, perturbed and updated, is checked
bit for bit against a one-rank engine for the Llama 3, Qwen3 and Qwen3-MoE layouts in
tests/engine/test_families.py; this run is Qwen2's (q/k/v biases sharded too) through the door a
user takes, `--tensor_parallel_size 2`."""

import pytest

from esvllm.runlog import read_metrics

from tests.helpers import final_weights, run, same_weights, without_eval


def test_a_run_on_a_two_rank_engine_equals_the_one_rank_run(first_run, tmp_path):
    sharded = run(tmp_path, "tp2", ["--num_engines", "1", "--tensor_parallel_size", "2"])
    records, reference = read_metrics(sharded), read_metrics(first_run)
    assert all(r["checksum"] and r["master_checksum"] for r in records)
    # Every member's rewards (generation under its perturbation, on both ranks' shards), the served
    # and master checksums after every update: the same. The update norm is a float sum over shards.
    strip = lambda rs: [{k: v for k, v in r.items() if k != "update_norm"} for r in without_eval(rs)]
    assert strip(records) == strip(reference)
    assert [r["update_norm"] for r in records] == pytest.approx([r["update_norm"] for r in reference], rel=1e-6)
    assert same_weights(final_weights(sharded), final_weights(first_run))  # export assembles the shards
