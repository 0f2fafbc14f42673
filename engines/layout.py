"""Where each Hugging Face tensor lives inside a loaded vLLM model (runs inside the vLLM worker).

vLLM fuses `q_proj,k_proj,v_proj` into `qkv_proj` and `gate_proj,up_proj` into `gate_up_proj`; ES noise
is defined per HF tensor (esvllm.noise), so every write goes through this map: HF tensor -> rows
[offset, offset + rows) of one vLLM parameter.

On CPU, vLLM repacks linear weights for its GEMM kernels at load time (`layer.cpu_linear`), and for
most linears replaces `layer.weight` with an empty tensor. A parameter written by ES must therefore be
re-packed after each write (`Target.packed_modules`); `Target.removed` says the weight only exists
inside the packed kernel, so a write assembles it in a temporary buffer first.

Only tensor parallel size 1 is supported: one engine per device, as the ES design uses.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Piece:
    """One HF tensor: rows [offset, offset + shape[0]) of its target's parameter."""

    hf_name: str
    shape: tuple[int, ...]
    offset: int


@dataclasses.dataclass
class Target:
    """One vLLM parameter that ES writes, with the HF tensors it is made of."""

    module: torch.nn.Module
    attr: str  # "weight" or "bias"
    vllm_name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    pieces: list[Piece]
    packed_modules: list[torch.nn.Module]  # modules whose CPU kernel holds a packed copy
    removed: bool  # the parameter is empty: its values live only in the packed kernel

    def param(self) -> torch.nn.Parameter:
        return getattr(self.module, self.attr)


def build_targets(model: torch.nn.Module, hf_shapes: dict[str, tuple[int, ...]]) -> list[Target]:
    """Map every HF tensor onto the vLLM model; fail if any vLLM parameter would be left out."""
    packed_names = {
        member: fused
        for fused, members in getattr(model, "packed_modules_mapping", {}).items()
        for member in members
    }
    dtype = next(p.dtype for p in model.parameters() if p.numel() > 0)
    targets: dict[str, Target] = {}
    for hf_name, shape in hf_shapes.items():
        module_path, attr = hf_name.rsplit(".", 1)
        parent, _, leaf = module_path.rpartition(".")
        offset = 0
        if leaf in packed_names:
            fused = packed_names[leaf]
            module = model.get_submodule(f"{parent}.{fused}" if parent else fused)
            index = model.packed_modules_mapping[fused].index(leaf)
            _require_single_partition(module, hf_name)
            offset = sum(module.output_sizes[:index])
            module_path = f"{parent}.{fused}" if parent else fused
        else:
            try:
                module = model.get_submodule(module_path)
            except AttributeError:
                raise ValueError(
                    f"HF tensor {hf_name!r} has no module {module_path!r} in the vLLM model "
                    f"({type(model).__name__}); this architecture's name mapping is not supported"
                ) from None
        vllm_name = f"{module_path}.{attr}"
        if vllm_name not in targets:
            targets[vllm_name] = _new_target(model, module, attr, vllm_name, shape, dtype)
        targets[vllm_name].pieces.append(Piece(hf_name, tuple(shape), offset))
    for target in targets.values():
        _settle_shape(target)
    _check_coverage(model, targets)
    return list(targets.values())


def _new_target(model, module, attr, vllm_name, hf_shape, dtype) -> Target:
    param = getattr(module, attr)
    removed = param.numel() == 0 and attr == "weight"
    packed = [
        m
        for m in model.modules()
        if hasattr(m, "cpu_linear") and getattr(m, attr, None) is param and attr == "weight"
    ]
    if removed:
        packed = [module]
    return Target(module, attr, vllm_name, tuple(param.shape), param.dtype if not removed else dtype,
                  [], packed, removed)


def _settle_shape(target: Target) -> None:
    """Removed weights have shape (0,); their real shape follows from the pieces they hold."""
    rows = max(p.offset + p.shape[0] for p in target.pieces)
    if target.removed:
        cols = target.pieces[0].shape[1:]
        target.shape = (target.module.output_size_per_partition, *cols)
    if rows > target.shape[0] or any(p.shape[1:] != target.shape[1:] for p in target.pieces):
        raise ValueError(
            f"HF tensors {[p.hf_name for p in target.pieces]} do not fit vLLM parameter "
            f"{target.vllm_name} of shape {target.shape}"
        )


def _check_coverage(model: torch.nn.Module, targets: dict[str, Target]) -> None:
    """Every vLLM parameter must be written by ES, all its rows (vocab padding excepted)."""
    for name, param in model.named_parameters():
        target = targets.get(name)
        if target is None:
            raise ValueError(
                f"vLLM parameter {name} {tuple(param.shape)} maps to no HF tensor: ES would leave "
                "it unperturbed; this architecture's name mapping is not supported"
            )
        covered = sum(p.shape[0] for p in target.pieces)
        is_vocab = "Embedding" in type(target.module).__name__ or "LMHead" in type(target.module).__name__
        if covered != target.shape[0] and not is_vocab:
            raise ValueError(f"vLLM parameter {name}: HF tensors cover {covered} of {target.shape[0]} rows")


def _require_single_partition(module: torch.nn.Module, hf_name: str) -> None:
    if getattr(module, "tp_size", 1) != 1:
        raise ValueError(
            f"{hf_name}: tensor parallel size {module.tp_size} is not supported; ES runs one engine "
            "per device (tensor_parallel_size=1)"
        )
