"""The model families: the built-in tiny models are transformers' own models of their family, and a
checkpoint ES cannot perturb is refused at the door, before Ray or any engine starts."""

import json
import math

import pytest
from safetensors import safe_open

from esvllm.machine import check_architecture
from esvllm.memory import ModelShape
from esvllm.models import BUILTIN_MODELS, FAMILIES, family_classes, resolve_model
from esvllm.run import main


@pytest.mark.parametrize("name", ["tiny", "tiny-llama", "tiny-qwen3"])
def test_each_tiny_model_has_the_tensors_of_transformers_own_model_of_its_family(name):
    spec = BUILTIN_MODELS[name]
    path = resolve_model(name)
    config = json.loads(open(f"{path}/config.json").read())
    assert config["architectures"] == [FAMILIES[spec.family]]
    config_class, model_class = family_classes(spec.family)
    model = model_class(config_class.from_pretrained(path))
    expected = {n: tuple(p.shape) for n, p in model.named_parameters()}  # a tied lm_head is listed once
    with safe_open(f"{path}/model.safetensors", "pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert stored == expected
    if spec.family == "llama":
        assert config["rope_parameters"]["rope_type"] == "llama3" and "lm_head.weight" in stored
        assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA
        assert not any(k.endswith(".bias") for k in stored)
    if spec.family == "qwen3":
        assert "model.layers.0.self_attn.q_norm.weight" in stored and "lm_head.weight" not in stored


@pytest.mark.parametrize("name, block, gate, up, down", [("tiny-qwen3-moe", "mlp", "gate_proj", "up_proj", "down_proj"),
                                                         ("tiny-mixtral", "block_sparse_moe", "w1", "w3", "w2")])
def test_each_tiny_moe_is_saved_one_tensor_per_expert_as_released_checkpoints_are(name, block, gate, up, down):
    # transformers holds the experts fused in memory; the checkpoint, which ES's noise is defined on, does not.
    path = resolve_model(name)
    config = json.loads(open(f"{path}/config.json").read())
    with safe_open(f"{path}/model.safetensors", "pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    hidden, inter = config["hidden_size"], config.get("moe_intermediate_size") or config["intermediate_size"]
    experts = config.get("num_experts") or config["num_local_experts"]  # the Hub's name, transformers 5's
    assert ModelShape.from_config(config).parameters == sum(math.prod(s) for s in stored.values())
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}.{block}."
        assert stored[prefix + "gate.weight"] == (experts, hidden)  # the router
        for e in range(experts):
            assert stored[f"{prefix}experts.{e}.{gate}.weight"] == stored[f"{prefix}experts.{e}.{up}.weight"] == (inter, hidden)
            assert stored[f"{prefix}experts.{e}.{down}.weight"] == (hidden, inter)


def write_config(tmp_path, config: dict):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def refused_before_start(monkeypatch, model_dir, *fragments):
    import engines.pool

    monkeypatch.setattr(engines.pool.EnginePool, "start", lambda *a, **k: pytest.fail("an engine was started"))
    with pytest.raises(SystemExit) as info:
        main(["--model_name", str(model_dir), "--task", "conciseness", "--engine", "fake", "--dry_run"])
    message = str(info.value.code)
    for fragment in fragments:
        assert fragment in message, message


def test_a_mixture_of_experts_model_other_than_those_mapped_is_refused_before_anything_starts(tmp_path, monkeypatch):
    # Qwen2-MoE: shared experts beside the routed ones, which the map does not cover.
    config = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 128,
              "intermediate_size": 256, "moe_intermediate_size": 64, "shared_expert_intermediate_size": 256,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": 4,
              "vocab_size": 128}
    model_dir = write_config(tmp_path / "moe", config)
    refused_before_start(monkeypatch, model_dir, "Qwen2MoeForCausalLM", "mixture-of-experts", "w13/w2",
                         "MixtralForCausalLM, Qwen3MoeForCausalLM", "LlamaForCausalLM")


@pytest.mark.parametrize("flags, fragments", [
    (["--perturbation", "lowrank"], ("--perturbation lowrank", "mixture-of-experts", "--perturbation full")),
    (["--engine", "hf"], ("--engine hf", "fused", "--engine vllm")),
])
def test_what_a_qwen3_moe_cannot_do_yet_is_refused_before_anything_starts(flags, fragments, monkeypatch):
    import engines.pool

    monkeypatch.setattr(engines.pool.EnginePool, "start", lambda *a, **k: pytest.fail("an engine was started"))
    args = ["--model_name", "tiny-qwen3-moe", "--task", "conciseness", "--dry_run", *flags]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert all(f in str(info.value.code) for f in fragments), info.value.code
    with pytest.raises(SystemExit) as planned:
        main(["--model_name", "tiny-qwen3-moe", "--task", "conciseness", "--dry_run"])
    assert planned.value.code == 0  # full rank on vLLM engines goes through


def test_a_config_that_is_not_a_causal_lm_is_refused_naming_what_it_lacks(tmp_path, monkeypatch):
    model_dir = write_config(tmp_path / "vlm", {"architectures": ["SomeVisionModel"], "text_config": {"hidden_size": 8}})
    refused_before_start(monkeypatch, model_dir, "SomeVisionModel", "hidden_size", "decoder-only")


def test_an_untested_dense_architecture_is_let_through_with_a_warning(tmp_path, caplog):
    model_dir = write_config(tmp_path / "mistral", {"architectures": ["MistralForCausalLM"], "hidden_size": 64,
                                                    "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 128})
    check_architecture(str(model_dir))  # the engines' own coverage check decides at start
    assert "MistralForCausalLM is not among the tested families" in caplog.text


LAYER_TENSORS = {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                 "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                 "input_layernorm.weight", "post_attention_layernorm.weight"}


@pytest.mark.parametrize("name", ["Llama-3.2-1B", "Llama-3.2-3B", "Llama-3.1-8B", "Qwen3-8B", "Qwen3-30B-A3B"])
def test_each_released_shape_is_transformers_own_model_of_that_config(name, tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from esvllm.memory import ModelShape
    from esvllm.model_shapes import RELEASED_SHAPES, write_released_shape

    path = write_released_shape(name, tmp_path / name)
    with torch.device("meta"):  # shapes only: no memory
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    names = {n for n, _ in model.named_parameters()}
    config = RELEASED_SHAPES[name]
    assert ModelShape.from_config(config).parameters == sum(p.numel() for p in model.parameters())
    if "num_experts" in config:  # transformers holds the experts fused: the count is the check
        assert ModelShape.from_config(config).parameters / 1e9 == pytest.approx(30.5, abs=0.1)
        return
    layer = LAYER_TENSORS | ({"self_attn.q_norm.weight", "self_attn.k_norm.weight"} if "Qwen3" in name else set())
    expected = {"model.embed_tokens.weight", "model.norm.weight"} | \
        {f"model.layers.{i}.{t}" for i in range(config["num_hidden_layers"]) for t in layer} | \
        (set() if config["tie_word_embeddings"] else {"lm_head.weight"})
    assert names == expected  # no bias, no tensor the HF-vLLM map does not know
    assert ModelShape.from_config(config).parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["Llama-3.1-8B", "Qwen3-8B"])
def test_an_8b_llama_or_qwen3_is_planned_for_one_80gb_gpu_and_fits_with_fewer_prompts(name, tmp_path):
    import subprocess
    import sys

    from esvllm.model_shapes import RELEASED_SHAPES
    from esvllm.memory import ModelShape

    model = tmp_path / name
    subprocess.run([sys.executable, "-m", "esvllm.models", "--shape", name, "--out", str(model)], check=True,
                   capture_output=True, timeout=120)

    def plan(*extra):
        out = subprocess.run([sys.executable, "-m", "esvllm.run", "--experiment", "countdown", "--model_name",
                              str(model), "--dry_run", "--cuda_devices", "0", "--gpu_memory_gb", "80", *extra],
                             capture_output=True, text=True, timeout=300)
        return out.returncode, json.loads(out.stdout.strip().splitlines()[-1])

    code, paper = plan()  # the paper's Countdown settings: 200 prompts x 1024 new tokens, fp32 master
    assert paper["parameters"] == ModelShape.from_config(RELEASED_SHAPES[name]).parameters
    assert code == 1 and not paper["fits"] and "--batch_size" in paper["reasons"][-1]  # the KV cache is short
    code, halved = plan("--batch_size", "100")
    assert code == 0 and halved["fits"] and halved["kv_cache_bytes"] >= halved["kv_cache_needed_bytes"]


def test_a_model_with_a_parameter_no_hf_tensor_maps_to_is_refused_naming_it_and_the_families():
    # What the engines check at start for an architecture outside the tested families (engines.layout).
    import torch

    from engines.layout import build_targets

    model = torch.nn.Module()
    model.embed_tokens = torch.nn.Embedding(16, 8)
    model.router = torch.nn.Linear(8, 4)  # e.g. an MoE router: no HF tensor of the checkpoint maps to it
    with pytest.raises(ValueError, match=r"router\.weight .*maps to no HF tensor.*LlamaForCausalLM"):
        build_targets(model, {"embed_tokens.weight": (16, 8)})
    model.router = torch.nn.Identity()
    assert [t.vllm_name for t in build_targets(model, {"embed_tokens.weight": (16, 8)})] == ["embed_tokens.weight"]
