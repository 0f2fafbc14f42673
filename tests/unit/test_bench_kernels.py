"""The GPU kernel benchmark (benchmarks.kernels) times the right tensors and the right arithmetic.

It runs on the device machine with torch only; here it is checked on CPU at the toy size.
"""

import json

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from benchmarks.kernels import main
from esvllm.model_shapes import QWEN25_SHAPES as SHAPES
from esvllm.model_shapes import qwen2_tensors


@pytest.mark.parametrize("size", list(SHAPES))
def test_the_benchmarked_tensors_are_those_of_a_real_qwen2_model(size):
    hidden, inter, layers, heads, kv_heads, vocab, tied = SHAPES[size]
    config = Qwen2Config(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                         tie_word_embeddings=tied)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    real = {name: tuple(p.shape) for name, p in model.named_parameters()}  # a tied lm_head is listed once
    assert qwen2_tensors(size) == real


def check_figures(results: dict) -> None:
    """Every time is reported against the bytes its verb must move at the bandwidth measured in the run."""
    [figures] = results["sizes"]
    params = sum(torch.Size(s).numel() for s in qwen2_tensors("toy").values())
    assert figures["parameters"] == params
    bandwidth, model_bytes = results["bandwidth"], 2  # bfloat16 model weights
    expected = {"noise": 4 * params / bandwidth, "perturb": (4 + model_bytes) * params / bandwidth,
                "update": (8 + model_bytes) * params / bandwidth}
    for verb, floor in expected.items():
        assert figures["floor_s"][verb] == pytest.approx(floor)
        assert figures[f"{verb}_over_floor"] == pytest.approx(figures[f"{verb}_s"] / floor)


def test_the_kernel_benchmark_reports_each_time_against_its_bytes_at_the_measured_bandwidth(tmp_path):
    out = tmp_path / "kernels.json"
    main(["--device", "cpu", "--sizes", "toy", "--population", "3", "--repeats", "1", "--copy_elements",
          str(2**22), "--json", str(out)])
    check_figures(json.loads(out.read_text()))


@pytest.mark.gpu
def test_the_kernel_benchmark_runs_on_cuda_and_reports_against_the_bandwidth(tmp_path):
    out = tmp_path / "kernels.json"
    main(["--device", "cuda", "--sizes", "toy", "--population", "3", "--repeats", "1", "--json", str(out)])
    check_figures(json.loads(out.read_text()))
