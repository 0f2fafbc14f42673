"""The memory plan (esvllm.memory) against hand-computed figures, and --dry_run as a user calls it."""

import json
import subprocess
import sys

import pytest

from esvllm.memory import (CHECKSUM_TEMPORARY, CONTEXT_RESERVE, GIB, GRAPH_ALLOWANCE, ModelShape, batched_tokens,
                           measured_shortfalls, plan, update_temporary)
from esvllm.model_shapes import qwen25_config, write_qwen25_shaped

GB = 10**9


@pytest.mark.parametrize("size, published", [("0.5B", 494_032_768), ("3B", 3_085_938_688),
                                             ("7B", 7_615_616_512), ("14B", 14_770_033_664)])
def test_parameter_counts_are_the_published_ones(size, published):
    assert ModelShape.from_config(qwen25_config(size)).parameters == published


def test_the_plan_adds_up_as_computed_by_hand():
    # hidden 1024, intermediate 4096, 2 layers, 8 heads and 8 KV heads of 128, vocab 1000, tied.
    shape = ModelShape(hidden=1024, intermediate=4096, layers=2, heads=8, kv_heads=8, vocab=1000, tied=True, head_dim=128)
    per_layer = 4 * 1024 * 1024 + 3 * 1024 + 3 * 1024 * 4096 + 2 * 1024  # q k v o (+ q k v biases), mlp, norms
    params = 1000 * 1024 + 2 * per_layer + 1024
    assert shape.parameters == params
    p = plan(shape, 10 * GB, model_dtype="bfloat16", sequences=4, tokens_per_sequence=100)
    largest = 1024 * 4096
    es_state = params * 4 + largest * (4 + 2) + CHECKSUM_TEMPORARY
    assert p.model_bytes == params * 2 and p.es_state_bytes == es_state
    assert p.gpu_memory_utilization == int((10 * GB - es_state - CONTEXT_RESERVE) / (10 * GB) * 1000) / 1000
    assert p.kv_cache_needed_bytes == 4 * 100 * (2 * 2 * 8 * 128 * 2)  # K and V, layers, heads, head_dim, bf16
    assert p.fits


def test_a_tensor_parallel_engine_holds_a_share_per_gpu():
    shape = ModelShape.from_config(qwen25_config("7B"))
    one, two = plan(shape, 80 * GB), plan(shape, 80 * GB, tensor_parallel_size=2)
    assert two.model_bytes == pytest.approx(one.model_bytes / 2, abs=1)
    assert two.es_state_bytes - CHECKSUM_TEMPORARY == pytest.approx((one.es_state_bytes - CHECKSUM_TEMPORARY) / 2, abs=2)


def dry_run(tmp_path, size, gb, *extra):
    model = write_qwen25_shaped(size, tmp_path / size)  # config.json only, no tokenizer, no weights
    out = subprocess.run([sys.executable, "-m", "esvllm.run", "--experiment", "countdown", "--model_name", str(model),
                          "--dry_run", "--gpu_memory_gb", str(gb), *extra], capture_output=True, text=True, timeout=300)
    return out.returncode, json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


@pytest.mark.parametrize("size", ["3B", "7B"])
@pytest.mark.parametrize("gb", [80, 141])
def test_the_papers_models_fit_with_room_for_the_es_state(tmp_path, size, gb):
    code, result, _ = dry_run(tmp_path, size, gb)
    assert code == 0 and result["fits"] and result["prompt_lengths_estimated"]
    assert result["gpu_memory_utilization"] * gb * GB + result["es_state_bytes"] + CONTEXT_RESERVE <= gb * GB
    assert result["kv_cache_bytes"] >= result["kv_cache_needed_bytes"]
    for key in ("model_bytes", "tensor_parallel_size", "gpu_memory_gb"):
        assert key in result


def test_14b_on_one_80gb_gpu_is_refused_with_tensor_parallelism_as_the_fix(tmp_path):
    code, result, stdout = dry_run(tmp_path, "14B", 80)
    assert code == 1 and not result["fits"]
    assert "--tensor_parallel_size 2" in stdout
    code, result, _ = dry_run(tmp_path, "14B", 80, "--tensor_parallel_size", "2")
    assert code == 0 and result["fits"] and result["tensor_parallel_size"] == 2


def test_the_lora_term_is_every_block_linears_a_and_b_per_slot_and_rank():
    shape = ModelShape.from_config(qwen25_config("7B"))  # hidden 3584, intermediate 18944, 28 layers, KV 4 x 128
    a = 3 * 3584 + 3584 + 2 * 3584 + 18944  # inputs: q, k, v; o; gate, up; down
    b = (3584 + 512 + 512) + 3584 + 2 * 18944 + 3584  # outputs
    assert shape.lora_elements_per_slot_rank(1) == 28 * (a + b)
    for rank, gigabytes in ((8, 1.29), (64, 10.33)):  # 32 slots in bf16: 1.3 and 10.3 GB
        lora = plan(shape, 141 * GB, lora_slots=32, lora_rank=rank).lora_bytes
        assert lora == 32 * rank * 28 * (a + b) * 2 and lora / GB == pytest.approx(gigabytes, abs=0.01)


def test_llama_and_qwen3_lora_terms_add_the_embedding_and_lm_head_layers_vllm_wraps():
    from esvllm.model_shapes import RELEASED_SHAPES

    shape = ModelShape.from_config(RELEASED_SHAPES["Llama-3.1-8B"])  # hidden 4096, intermediate 14336, 32 layers, KV 8 x 128
    a = 3 * 4096 + 4096 + 2 * 4096 + 14336
    b = (4096 + 1024 + 1024) + 4096 + 2 * 14336 + 4096
    embeddings = (128256 + 4096) + (4096 + 128256)  # embed_tokens: A vocab x r, B hidden x r; lm_head: A r x hidden, B vocab x r
    assert shape.lora_elements_per_slot_rank(1) == 32 * (a + b) + embeddings
    lora = plan(shape, 141 * GB, lora_slots=32, lora_rank=64).lora_bytes
    assert lora == 32 * 64 * (32 * (a + b) + embeddings) * 2  # 32 slots of rank 64 in bf16: 11.82 GB, 1.08 of them embeddings
    assert ModelShape.from_config(RELEASED_SHAPES["Qwen3-8B"]).embedding_lora
    assert not ModelShape.from_config(qwen25_config("7B")).embedding_lora  # vLLM's Qwen2 wraps block linears only


def test_lora_buffers_come_out_of_the_kv_cache_and_a_rank_that_cannot_fit_is_refused_with_the_fix():
    shape = ModelShape.from_config(qwen25_config("7B"))
    plain, lowrank = plan(shape, 80 * GB, sequences=64), plan(shape, 80 * GB, sequences=64, lora_slots=32, lora_rank=64)
    graphs_with_lora = lowrank.cuda_graph_bytes - plain.cuda_graph_bytes  # every graph captured twice with LoRA
    assert plain.kv_cache_bytes - lowrank.kv_cache_bytes == lowrank.lora_bytes + graphs_with_lora
    refused = plan(shape, 80 * GB, sequences=64, lora_slots=32, lora_rank=512)
    assert not refused.fits and any("a smaller --rank" in r for r in refused.reasons)


def test_vllms_batch_of_profiled_tokens_follows_the_gpu():
    assert batched_tokens(80 * GB) == batched_tokens(141 * GB) == 16384  # H100, H200
    assert batched_tokens(80 * GB, "NVIDIA A100-SXM4-80GB") == 8192
    assert batched_tokens(40 * GB) == 8192
    shape = ModelShape.from_config(qwen25_config("7B"))
    small, large = plan(shape, 80 * GB, max_num_batched_tokens=8192), plan(shape, 80 * GB, max_num_batched_tokens=16384)
    assert large.activation_bytes - small.activation_bytes == 8192 * (3584 * 6 + 18944 * 4) * 2


def test_the_updates_largest_temporary_is_counted_in_the_es_state():
    shape = ModelShape.from_config(qwen25_config("7B"))
    adam = update_temporary(shape, "adam", 0, 0, 1)
    assert adam == 152064 * 3584 * 4 and adam / GIB == pytest.approx(2.03, abs=0.01)  # the embedding, fp32
    lowrank = update_temporary(shape, "sgd", 32, 512, 1)
    assert lowrank == (32 * 512 * (18944 + 3584) + 18944 * 3584) * 4  # stacked factors and their product
    assert plan(shape, 141 * GB, optimizer="adam").es_state_bytes - plan(shape, 141 * GB).es_state_bytes == adam


def test_a_low_rank_dry_run_plans_the_lora_slots_and_every_members_sequences(tmp_path):
    code, result, stdout = dry_run(tmp_path, "7B", 80, "--cuda_devices", "4,5", "--perturbation", "lowrank",
                                   "--rank", "64")
    assert code == 0 and result["fits"] and result["cuda_devices"] == [4, 5]
    assert "GPUs: 4,5" in stdout and "LoRA slots" in stdout
    assert result["lora_bytes"] > 0 and result["sequences"] == 256  # 200 prompts x 15 members, at most max_num_seqs


def test_cuda_graphs_are_allowed_for_as_vllm_captures_them_and_come_out_of_the_kv_cache():
    # vLLM 0.32 (config/vllm.py, gpu_model_runner.profile_cudagraph_memory): with max_num_seqs 256 it
    # captures batch sizes 1, 2, 4, 8..248 by 8, 256..512 by 16 (51 sizes) as PIECEWISE graphs and
    # those up to 256 (35) as FULL decode graphs; both share one pool, sized by the largest graph.
    # With LoRA each is captured with and without adapters.
    shape = ModelShape.from_config(qwen25_config("7B"))
    pool = 512 * (3584 * 6 + 18944 * 4) * 2  # a bf16 forward pass of 512 tokens' activations
    plain = plan(shape, 80 * GB, sequences=64)
    assert plain.cuda_graph_bytes == pool + (51 + 35 - 1) * GRAPH_ALLOWANCE
    assert plan(shape, 80 * GB, sequences=64, lora_slots=4, lora_rank=8).cuda_graph_bytes == pool + (172 - 1) * GRAPH_ALLOWANCE
    assert plan(shape, 80 * GB, sequences=64, max_num_seqs=4).cuda_graph_bytes == 8 * (3584 * 6 + 18944 * 4) * 2 + (
        4 + 3 - 1) * GRAPH_ALLOWANCE  # sizes 1, 2, 4, 8; FULL 1, 2, 4
    share = plain.gpu_memory_utilization * 80 * GB
    assert plain.kv_cache_bytes == int(share) - plain.model_bytes - plain.activation_bytes - plain.cuda_graph_bytes
    assert "CUDA graphs ~" in plain.describe()


def test_what_engines_measured_at_start_is_compared_with_the_plan():
    shape = ModelShape.from_config(qwen25_config("0.5B"))
    p = plan(shape, 80 * GB, sequences=100, tokens_per_sequence=300)
    enough = {"index": 0, "kv_cache_tokens": 30_000, "cuda_graph_bytes": p.cuda_graph_bytes}
    assert measured_shortfalls(p, [enough]) == []
    short = {"index": 1, "kv_cache_tokens": 29_999, "cuda_graph_bytes": p.cuda_graph_bytes + 1}
    notes = measured_shortfalls(p, [enough, short])
    assert len(notes) == 2 and all(n.startswith("engine 1:") for n in notes)
    assert "holds 29999 tokens" in notes[1] and "need 30000" in notes[1] and "--batch_size" in notes[1]
    assert measured_shortfalls(p, [{"index": 2}]) == []  # an HF engine measures nothing


def test_a_run_warns_when_an_engines_kv_cache_is_smaller_than_its_plan_needs(tmp_path, monkeypatch, caplog):
    # Through the user's entry point, on a fake engine that reports what a vLLM engine measured at start.
    from esvllm.run import main

    monkeypatch.setenv("ESVLLM_FAKE_MEMORY", f"100:{2 * GIB}")
    argv = ["--model_name", "tiny", "--task", "conciseness", "--engine", "fake", "--in_process", "--population_size",
            "2", "--num_iterations", "1", "--data_sample", "4", "--test_size", "2", "--max_tokens", "8",
            "--gpu_memory_gb", "80", "--output_dir", str(tmp_path)]
    with caplog.at_level("WARNING"):
        run_dir = main(argv)
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory plan:")]
    assert len(warned) == 2, warned
    assert "CUDA graphs took 2.00 GiB" in warned[0] and "the KV cache holds 100 tokens" in warned[1]
    assert json.loads((run_dir / "engines.json").read_text())[0]["kv_cache_tokens"] == 100
