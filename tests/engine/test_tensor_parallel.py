"""Tensor parallelism on CPU: one engine over two ranks (vLLM's mp executor, gloo) holds the same
weights and computes the same run as a one-rank engine, bit for bit."""

import pytest
import torch

from esvllm.runlog import read_metrics

from tests.conftest import start_pool
from tests.helpers import final_weights, run, same_weights, without_eval



@pytest.fixture(scope="module")
def one_and_two_ranks(engine_pair, tmp_path_factory):
    """The session's one-rank engine and a two-rank engine started from its current base weights."""
    one = engine_pair[0]
    base = one.export(str(tmp_path_factory.mktemp("tp") / "base"))
    sharded = start_pool(base, num_engines=1, tensor_parallel_size=2)
    yield one, sharded.engines[0]
    one.restore()
    sharded.shutdown()


def test_two_ranks_perturb_every_hf_tensor_to_the_one_rank_values(one_and_two_ranks):
    one, two = one_and_two_ranks
    assert two.info["ranks"] == 2
    assert (two.info["tensors"], two.info["parameters"]) == (one.info["tensors"], one.info["parameters"])
    for engine in (one, two):
        engine.perturb(4242, 0.02)
    a, b = one.read_weights(), two.read_weights()  # the ranks' shards assembled into HF tensors
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert one.checksum() == two.checksum()


def test_two_ranks_apply_the_same_update_and_report_the_same_checksum(one_and_two_ranks, engine_pair):
    one, two = one_and_two_ranks
    pairs = [(7, 3e-3), (8, -2e-3), (9, 1e-5)]
    results = [engine.apply_update(pairs) for engine in (one, two)]
    engine_pair[1].apply_update(pairs)  # the session's pair stays in step
    assert one.checksum() == two.checksum() and one.master_checksum() == two.master_checksum()
    assert results[1]["update_norm"] == pytest.approx(results[0]["update_norm"], rel=1e-6)
    a, b = one.master_weights(), two.master_weights()
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_run_on_a_two_rank_engine_equals_the_one_rank_run(first_run, tmp_path):
    sharded = run(tmp_path, "tp2", ["--num_engines", "1", "--tensor_parallel_size", "2"])
    records = read_metrics(sharded)
    assert all(r["checksum"] for r in records)
    # Same rewards (generation), same checksums (weights); the update norm is a float sum over shards.
    strip = lambda rs: [{k: v for k, v in r.items() if k != "update_norm"} for r in without_eval(rs)]
    assert strip(records) == strip(read_metrics(first_run))
    assert same_weights(final_weights(sharded), final_weights(first_run))  # export assembles the shards
