"""Which model architectures ES can perturb: the families tested end to end, and the refusal of the
rest at the door (imports nothing heavy: `--help` and config checks use it)."""

from __future__ import annotations

# The architectures whose every vLLM parameter this map covers, tested end to end (tests/engine).
TESTED_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")


def architecture_problem(config: dict) -> str | None:
    """Why ES cannot perturb a checkpoint of this config.json, or None. Mixture-of-experts models are
    refused: vLLM stacks their experts into fused w13/w2 parameters, which this map does not cover."""
    name = (config.get("architectures") or [config.get("model_type", "?")])[0]
    if any(config.get(key) for key in MOE_KEYS) or "moe" in name.lower() or "mixtral" in name.lower():
        return (f"{name} is a mixture-of-experts model: vLLM stacks its experts into fused w13/w2 parameters, "
                "which esvllm does not map to HF tensors yet, so it cannot perturb them; use a dense model of the "
                f"families tested: {', '.join(TESTED_ARCHITECTURES.values())}")
    missing = [k for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size") if k not in config]
    if missing:
        return (f"{name}: config.json has no {', '.join(missing)} (a multimodal or encoder model?); esvllm "
                f"trains decoder-only causal LMs: {', '.join(TESTED_ARCHITECTURES.values())}")
    return None
