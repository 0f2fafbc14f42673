"""Checkpoints with the exact shapes of released models, for --dry_run plans and GPU checks: their
config.json, their HF tensor names and shapes, and (optionally) random weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


# The shapes of the Qwen2.5 models (their config.json): hidden, intermediate, layers, attention
# heads, KV heads, vocab, tied embeddings. "toy" is a small stand-in with the same structure.
QWEN25_SHAPES = {
    "toy": (256, 1024, 2, 4, 2, 1000, True),
    "0.5B": (896, 4864, 24, 14, 2, 151936, True),
    "1.5B": (1536, 8960, 28, 12, 2, 151936, True),
    "3B": (2048, 11008, 36, 16, 2, 151936, True),
    "7B": (3584, 18944, 28, 28, 4, 152064, False),
    "14B": (5120, 13824, 48, 40, 8, 152064, False),
}


# Llama 3.x and Qwen3 as their config.json give them (the fields the plan and vLLM read).
_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_act": "silu",
          "attention_bias": False, "mlp_bias": False, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
          "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": 128001}
_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
RELEASED_SHAPES = {
    "Llama-3.2-1B": {**_LLAMA, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True,
                     "rope_theta": 500000.0, "rope_scaling": {**_LLAMA3_ROPE, "factor": 32.0}},
    "Llama-3.2-3B": {**_LLAMA, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                     "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True,
                     "rope_theta": 500000.0, "rope_scaling": {**_LLAMA3_ROPE, "factor": 32.0}},
    "Llama-3.1-8B": {**_LLAMA, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False,
                     "rope_theta": 500000.0, "rope_scaling": {**_LLAMA3_ROPE, "factor": 8.0}},
    "Qwen3-8B": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
                 "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False, "attention_bias": False,
                 "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
                 "torch_dtype": "bfloat16", "bos_token_id": 151643, "eos_token_id": 151645},
    "Qwen3-30B-A3B": {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 151936,
                      "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
                      "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                      "num_experts": 128, "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [],
                      "norm_topk_prob": True, "tie_word_embeddings": False, "attention_bias": False,
                      "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                      "max_position_embeddings": 40960, "torch_dtype": "bfloat16", "bos_token_id": 151643,
                      "eos_token_id": 151645},
}


def write_released_shape(name: str, path: Path) -> Path:
    """config.json of a released model (RELEASED_SHAPES) in `path`, for --dry_run plans."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(RELEASED_SHAPES[name], indent=2))
    return path


def qwen25_config(size: str) -> dict:
    """A config.json with the exact shapes of Qwen2.5-`size` (for --dry_run and GPU checks)."""
    hidden, inter, layers, heads, kv_heads, vocab, tied = QWEN25_SHAPES[size]
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "vocab_size": vocab, "tie_word_embeddings": tied,
            "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "max_position_embeddings": 32768, "torch_dtype": "bfloat16", "bos_token_id": 151643,
            "eos_token_id": 151645}


def qwen2_tensors(size: str) -> dict[str, tuple]:
    """HF tensor names and shapes of Qwen2.5-`size` (a tied lm_head is not a tensor of its own)."""
    hidden, inter, layers, heads, kv_heads, vocab, tied = QWEN25_SHAPES[size]
    kv = hidden // heads * kv_heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.q_proj.bias": (hidden,),
            p + "self_attn.k_proj.weight": (kv, hidden), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
        })
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def write_qwen25_shaped(size: str, path: Path, weights: bool = False, dtype: str = "bfloat16") -> Path:
    """config.json of Qwen2.5-`size`, and with `weights` random weights (N(0, 0.02), seeded per tensor)."""
    import torch

    from engines.safetensors_io import write_sharded

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(qwen25_config(size), indent=2))
    if weights:
        def random_tensor(name, shape):
            seed = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")
            return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).mul_(0.02)

        entries = [(name, shape, getattr(torch, dtype), lambda n=name, s=shape: random_tensor(n, s))
                   for name, shape in qwen2_tensors(size).items()]
        write_sharded(path, entries)
    return path
