"""Which model architectures ES can perturb: the families tested end to end, and the refusal of the
rest at the door (imports nothing heavy: `--help` and config checks use it)."""

from __future__ import annotations

# The architectures whose every vLLM parameter this map covers, tested end to end (tests/engine).
TESTED_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
                        "qwen3_moe": "Qwen3MoeForCausalLM", "mixtral": "MixtralForCausalLM"}
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")
# Experts named mlp.experts.<e>.{gate,up,down}_proj or block_sparse_moe.experts.<e>.w{1,3,2} (engines.moe_layout).
MAPPED_MOE = {"Qwen3MoeForCausalLM", "MixtralForCausalLM"}


def is_moe(config: dict) -> bool:
    name = (config.get("architectures") or [config.get("model_type", "?")])[0]
    return any(config.get(key) for key in MOE_KEYS) or "moe" in name.lower() or "mixtral" in name.lower()


def architecture_problem(config: dict) -> str | None:
    """Why ES cannot perturb a checkpoint of this config.json, or None. Of the mixture-of-experts
    models Qwen3-MoE and Mixtral are mapped (their HF experts onto vLLM's fused w13/w2 parameters)."""
    name = (config.get("architectures") or [config.get("model_type", "?")])[0]
    if is_moe(config) and name not in MAPPED_MOE:
        return (f"{name} is a mixture-of-experts model whose experts (and any shared experts) esvllm does not "
                "map onto vLLM's fused w13/w2 parameters, so it cannot perturb them; the mapped ones are "
                f"{', '.join(sorted(MAPPED_MOE))}, and the dense families tested are "
                f"{', '.join(v for v in TESTED_ARCHITECTURES.values() if v not in MAPPED_MOE)}")
    missing = [k for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size") if k not in config]
    if missing:
        return (f"{name}: config.json has no {', '.join(missing)} (a multimodal or encoder model?); esvllm "
                f"trains decoder-only causal LMs: {', '.join(TESTED_ARCHITECTURES.values())}")
    return None
