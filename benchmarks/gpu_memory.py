"""`make gpu-check`'s memory sections: the memory plan's terms (esvllm.memory) against the CUDA allocator.

The ES state of Qwen2.5-shaped tensors, LoRA-shaped slot buffers in vLLM's layout, an Adam step on
the largest 7B tensor and a rank-64 low-rank update, each measured with torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import torch

from engines.es_state import ESState
from esvllm.memory import ModelShape, plan
from esvllm.model_shapes import QWEN25_SHAPES, qwen2_tensors, qwen25_config
from kernels.lowrank import combined_update


def memory_figure(size: str, device: str, population: int = 30) -> dict:
    """ES state allocated on the device (peak above the model's weights) against the plan."""
    shapes = qwen2_tensors(size)
    torch.cuda.empty_cache()
    model = {n: torch.empty(s, dtype=torch.bfloat16, device=device).normal_(0, 0.02) for n, s in shapes.items()}
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    master = {n: t.float() for n, t in model.items()}  # as load_checkpoint: to the device, then converted

    def write_all(write):
        for n, t in master.items():
            write(n, t, model[n])

    es = ESState(master, write_all, None, read_all=lambda read: [read(n, model[n]) for n in master])
    es.perturb(1, 1e-3)
    es.apply_update([(1000 + i, 1e-6) for i in range(population)])
    es.checksum()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - baseline
    planned = plan(ModelShape.from_config(qwen25_config(size)), 141 * 10**9).es_state_bytes
    shape = ModelShape.from_config(qwen25_config(size))
    export_copy = shape.largest_tensor * 2  # counted by the plan for an export's bf16 copy (not run here)
    del es, master, model
    torch.cuda.empty_cache()
    return {"size": size, "measured_bytes": measured, "planned_bytes": planned,
            "planned_without_export_copy": planned - export_copy,
            "measured_over_planned": measured / (planned - export_copy)}


def lora_shaped_buffers(size: str, slots: int, rank: int, device: str, dtype=torch.bfloat16) -> list[torch.Tensor]:
    """Zero tensors with the shapes vLLM's LoRA layers allocate for `slots` adapters of `rank` (one
    GPU): per layer, A (slots, 1, rank, input) and B (slots, 1, output, rank) for each slice of
    qkv_proj (q, k, v), o_proj, gate_up_proj (gate, up) and down_proj."""
    hidden, inter, layers, heads, kv_heads, _, _ = QWEN25_SHAPES[size]
    head_dim = hidden // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    slices = [(hidden, q), (hidden, kv), (hidden, kv), (q, hidden), (hidden, inter), (hidden, inter), (inter, hidden)]
    out = []
    for _ in range(layers):
        for inputs, outputs in slices:
            out += [torch.zeros(slots, 1, rank, inputs, dtype=dtype, device=device),
                    torch.zeros(slots, 1, outputs, rank, dtype=dtype, device=device)]
    return out


def allocated(fn, device: str) -> int:
    """Peak bytes the allocator gave `fn` above what was live before it (CUDA)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    kept = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del kept
    torch.cuda.empty_cache()
    return peak


def plan_terms(device: str) -> dict:
    """The memory plan's LoRA term and the update's temporaries against what the allocator gives."""
    from engines.optimizer import Optimizer
    from esvllm.memory import update_temporary

    out = {}
    for size, slots, rank in (("0.5B", 32, 8), ("7B", 32, 8), ("7B", 32, 64)):
        shape = ModelShape.from_config(qwen25_config(size))
        planned = plan(shape, 141 * 10**9, lora_slots=slots, lora_rank=rank).lora_bytes
        measured = allocated(lambda: lora_shaped_buffers(size, slots, rank, device), device)
        out[f"lora_{size}_slots{slots}_rank{rank}"] = {"planned_bytes": planned, "measured_bytes": measured,
                                                       "measured_over_planned": measured / planned}
    shape = ModelShape.from_config(qwen25_config("7B"))
    largest = torch.randn(152064, 3584, device=device) * 0.02  # the 7B embedding, fp32 master
    step = torch.randn_like(largest) * 1e-4
    optimizer = Optimizer({"embed": largest})
    optimizer.step("embed", largest, step.clone(), {"optimizer": "adam", "alpha": 1e-3, "step": 1})  # moments exist
    adam = allocated(lambda: optimizer.step("embed", largest, step.clone(), {"optimizer": "adam", "alpha": 1e-3,
                                                                            "step": 2}), device)
    del largest, step, optimizer
    out["adam_7b"] = {"planned_bytes": update_temporary(shape, "adam", 0, 0, 1), "measured_bytes": adam - 152064 * 3584 * 4}
    pairs = [(100 + i, 1e-4) for i in range(32)]
    lowrank = allocated(lambda: combined_update(pairs, "model.layers.0.mlp.gate_proj.weight", (18944, 3584), 64,
                                                device), device)
    out["lowrank_7b_rank64_members32"] = {"planned_bytes": update_temporary(shape, "sgd", 32, 64, 1),
                                          "measured_bytes": lowrank}
    from kernels import cuda

    try:
        cuda.fill_rows(torch.empty(64, 32, device=device).t(), (1, 2), 0, 0, 64)
        out["strided_refused"] = False
    except ValueError:
        out["strided_refused"] = True
    return out
