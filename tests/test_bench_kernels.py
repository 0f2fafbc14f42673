"""The GPU kernel benchmark (esvllm.bench_kernels) times the right tensors and the right arithmetic.

It runs on the device machine with torch only; here it is checked on CPU at the toy size.
"""

import json

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from esvllm.bench_kernels import SHAPES, main, qwen2_tensors


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


def test_the_kernel_benchmark_runs_on_cpu_and_writes_its_figures(tmp_path):
    out = tmp_path / "kernels.json"
    main(["--device", "cpu", "--sizes", "toy", "--population", "3", "--repeats", "1", "--json", str(out)])
    [figures] = json.loads(out.read_text())["sizes"]
    assert figures["parameters"] == sum(torch.Size(s).numel() for s in qwen2_tensors("toy").values())
    for key in ("noise_over_floor", "perturb_over_floor", "update_over_floor"):
        assert figures[key] > 0, key


@pytest.mark.gpu
def test_the_kernel_benchmark_runs_on_cuda_and_writes_its_figures(tmp_path):
    out = tmp_path / "kernels.json"
    main(["--device", "cuda", "--sizes", "toy", "--population", "3", "--repeats", "1", "--json", str(out)])
    [figures] = json.loads(out.read_text())["sizes"]
    assert figures["noise_over_floor"] > 0 and figures["update_over_floor"] > 0
