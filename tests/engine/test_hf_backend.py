"""The reference backend (transformers generate) computes the same ES weights as the vLLM engines."""

import pytest
import torch

from tests.conftest import start_local, start_pool



PROMPTS = ["12+7=", "hello world", "Using the numbers [3, 5, 7]"]
GREEDY = {"temperature": 0.0, "max_tokens": 12}


@pytest.fixture(scope="module")
def hf_and_vllm(engine_pair, tmp_path_factory):
    """The session's first vLLM engine and an HF engine started from its current base weights
    (exported to `hf.checkpoint`)."""
    vllm = engine_pair[0]
    checkpoint = vllm.export(str(tmp_path_factory.mktemp("hf") / "base"))
    hf = start_pool(checkpoint, num_engines=1, backend="hf")
    hf.engines[0].checkpoint = checkpoint
    hf.engines[0].at_checkpoint = [c["text"] for c in hf.engines[0].generate(PROMPTS, GREEDY)]  # before any update
    yield hf.engines[0], vllm
    vllm.restore()
    hf.shutdown()


def test_an_engine_without_es_state_generates_as_transformers_does_from_the_checkpoint(hf_and_vllm):
    # What esvllm.eval starts, here in this process (what is checked is what vLLM generates).
    plain = start_local(hf_and_vllm[0].checkpoint, es_state=False)
    try:
        assert plain.engines[0].info["es_state"] is False and plain.engines[0].info["master_bytes"] == 0
        assert [c["text"] for c in plain.engines[0].generate(PROMPTS, GREEDY)] == hf_and_vllm[0].at_checkpoint
    finally:
        plain.shutdown()


def test_both_backends_start_from_the_checkpoint_bit_for_bit(hf_and_vllm):
    from safetensors.torch import load_file

    checkpoint = load_file(f"{hf_and_vllm[0].checkpoint}/model.safetensors")
    for engine in hf_and_vllm:
        master = engine.master_weights()
        assert master.keys() == checkpoint.keys() - {"lm_head.weight"}  # tied: one tensor, one noise (none exported)
        assert all(torch.equal(master[n], checkpoint[n]) for n in master)


def test_both_backends_perturb_to_identical_weights(hf_and_vllm):
    hf, vllm = hf_and_vllm
    for engine in (hf, vllm):
        engine.perturb(2024, 0.02)
    a, b = hf.read_weights(), vllm.read_weights()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_both_backends_apply_the_same_update_bit_for_bit(hf_and_vllm, engine_pair):
    hf, vllm = hf_and_vllm
    pairs = [(7, 3e-3), (8, -2e-3), (9, 1e-5)]
    for engine in (hf, vllm, engine_pair[1]):  # the session's pair stays in step
        engine.apply_update(pairs)
    assert hf.checksum() == vllm.checksum()
    a, b = hf.master_weights(), vllm.master_weights()
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_both_backends_generate_the_same_greedy_text_and_token_counts(hf_and_vllm):
    hf, vllm = hf_and_vllm
    prompts = ["word of 4 letters after abcdef:", "12+7=", "Using the numbers [3, 5, 7]"]
    greedy = {"temperature": 0.0, "max_tokens": 16}
    assert [(c["text"], c["tokens"]) for c in hf.generate(prompts, greedy)] == \
        [(c["text"], c["tokens"]) for c in vllm.generate(prompts, greedy)]
