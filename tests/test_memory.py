"""The memory plan (esvllm.memory) against hand-computed figures, and --dry_run as a user calls it."""

import json
import subprocess
import sys

import pytest

from esvllm.memory import CHECKSUM_TEMPORARY, CONTEXT_RESERVE, ModelShape, plan
from esvllm.models import qwen25_config, write_qwen25_shaped

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
