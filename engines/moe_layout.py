"""Mixture-of-experts parameters (Qwen3-MoE, Mixtral): where each HF expert tensor lives in vLLM's fused ones.

vLLM stacks a layer's experts into two parameters of its `RoutedExperts` module:
    w13_weight (experts, 2 * I, hidden): expert e's gate_proj rows, then its up_proj rows
    w2_weight  (experts, hidden, I):     expert e's down_proj
ES noise stays defined per HF tensor (`mlp.experts.<e>.gate_proj.weight`, ...), so each is a Piece
of the parameter seen as a matrix of rows: w13 as (experts * 2I, hidden), w2 as (experts * hidden, I).
Tensor parallelism shards I (gate/up rows, down columns), as vLLM's FusedMoE does.

On CPU, vLLM's MoE kernel keeps the weights in its own grouped-GEMM order (`prepack_moe_weight`,
per ISA), in the same parameter. `ExpertPacking` learns that order once by packing the elements'
own indices (as bit patterns: packing only moves elements), so a write packs the matrix it wrote
and a read unpacks exactly what the kernel computes with.
"""

from __future__ import annotations

import re

import torch

EXPERT_TENSOR = re.compile(r"^(?P<layer>.+)\.experts\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$")
MIXTRAL_NAMES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}  # Mixtral's names for the same three


def expert_parts(hf_name: str):
    """(layer path, expert index, projection) of an HF expert tensor's name, or None."""
    match = EXPERT_TENSOR.match(hf_name)
    if not match:
        return None
    return match["layer"], int(match["expert"]), MIXTRAL_NAMES.get(match["proj"], match["proj"])


def routed_experts(model: torch.nn.Module, layer: str):
    """(vLLM path, module) of the module holding w13_weight/w2_weight under `layer`.experts; the path
    as the parameters are named without LoRA (low-rank mode wraps the experts in a `base_layer`)."""
    base = f"{layer}.experts"
    for name, module in model.get_submodule(base).named_modules():
        if hasattr(module, "w13_weight") and hasattr(module, "w2_weight"):
            path = [part for part in f"{base}.{name}".split(".") if part and part != "base_layer"]
            return ".".join(path), module
    raise ValueError(f"{base}: no module with w13_weight/w2_weight in the vLLM model")


def expert_piece(module, expert: int, proj: str, hf_name: str, hf_shape: tuple, rank: int, size: int):
    """The Piece of HF expert tensor `hf_name` in `module`'s w13 (gate, up) or w2 (down), and the attr."""
    from engines.layout import Piece

    experts, rows13, hidden = module.w13_weight.shape
    total = getattr(module, "global_num_experts", experts)
    if experts != total:
        raise ValueError(f"{hf_name}: vLLM holds {experts} of {total} experts here (expert parallelism); "
                         "ES maps whole expert sets only")
    local = rows13 // 2  # I / T
    full = hf_shape[1] if proj == "down_proj" else hf_shape[0]
    if local * size != full:
        raise ValueError(f"{hf_name} {hf_shape}: vLLM's w13_weight {tuple(module.w13_weight.shape)} is padded "
                         f"({local} x {size} rows for an intermediate size of {full}); not mapped")
    own = (rank * local, (rank + 1) * local)
    if proj == "down_proj":
        return "w2_weight", Piece(hf_name, hf_shape, None, own if size > 1 else None, expert * hidden)
    offset = expert * 2 * local + (local if proj == "up_proj" else 0)
    return "w13_weight", Piece(hf_name, hf_shape, own if size > 1 else None, None, offset)


def as_rows(param: torch.Tensor) -> tuple[int, int]:
    """The (rows, columns) matrix a 3-D expert parameter is seen as."""
    return param.shape[0] * param.shape[1], param.shape[2]


class ExpertPacking:
    """The order in which vLLM's kernel keeps one expert parameter: `pack` a matrix of rows into it,
    `unpack` the parameter into that matrix. Identity where the kernel reads the weights as stored."""

    def __init__(self, module, attr: str):
        param = getattr(module, attr)
        self.shape = tuple(param.shape)
        self.isa = cpu_isa(module) if param.device.type == "cpu" else None
        self.order = None  # order[i]: where element i of the plain matrix sits in the packed parameter
        if self.isa is not None:
            self.order = packed_positions(self.shape, param.dtype, self.isa)

    def pack(self, rows: torch.Tensor) -> torch.Tensor:
        plain = rows.reshape(self.shape)
        if self.isa is None:
            return plain
        from vllm._custom_ops import cpu_prepack_moe_weight

        return cpu_prepack_moe_weight(plain.contiguous(), self.isa)

    def unpack(self, param: torch.Tensor) -> torch.Tensor:
        flat = param.reshape(-1)
        if self.order is not None:
            flat = flat[self.order]
        return flat.reshape(self.shape[0] * self.shape[1], self.shape[2])


def cpu_isa(module) -> str | None:
    """The ISA vLLM's CPU MoE kernel packed this layer's experts for, or None when it does not pack."""
    method = getattr(module, "quant_method", None)
    kernel = getattr(getattr(method, "moe_kernel", None), "fused_experts", None)
    if getattr(kernel, "_use_zentorch", False):
        raise ValueError("vLLM's zentorch MoE kernel keeps the experts in its own format; not mapped")
    return getattr(kernel, "isa", None)


def packed_positions(shape: tuple, dtype: torch.dtype, isa: str) -> torch.Tensor:
    """For each element of the plain parameter, its position in the packed one: pack the elements'
    indices, carried as bit patterns of `dtype` (16 bits at a time for 2-byte types)."""
    from vllm._custom_ops import cpu_prepack_moe_weight

    count = int(torch.Size(shape).numel())
    index = torch.arange(count, dtype=torch.int64)
    holder, width = {4: (torch.int32, 32), 2: (torch.int16, 16)}[torch.empty((), dtype=dtype).element_size()]
    mask = (1 << width) - 1
    moved = torch.zeros(count, dtype=torch.int64)  # moved[p]: the plain element packed slot p holds
    shift = 0
    while shift == 0 or count > 1 << shift:
        bits = ((index >> shift) & mask).to(holder)  # wraps into the signed type: the bits are kept
        packed = cpu_prepack_moe_weight(bits.view(dtype).reshape(shape), isa)
        moved |= (packed.reshape(-1).view(holder).to(torch.int64) & mask) << shift
        shift += width
    if not torch.equal(torch.sort(moved).values, index):
        raise ValueError(f"vLLM's CPU MoE packing ({isa}) is not a reordering of the weights; not mapped")
    positions = torch.empty(count, dtype=torch.int64)
    positions[moved] = index
    return positions
