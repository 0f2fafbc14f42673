"""Where each Hugging Face tensor lives inside a loaded vLLM model (runs inside each vLLM worker).

vLLM fuses `q_proj,k_proj,v_proj` into `qkv_proj` and `gate_proj,up_proj` into `gate_up_proj`; ES noise
is defined per HF tensor (kernels.definition), so every write goes through this map: the part of an HF
tensor this rank holds -> rows [offset, offset + rows) of one vLLM parameter.

Tensor parallelism (T ranks, this one r), as vLLM's weight loaders shard Qwen2:
- q/k/v (rows): q heads [r*nh, (r+1)*nh); k and v heads of rank r // replicas (KV heads are
  replicated when there are fewer than T; only the first replica counts in checksums);
- gate/up and other column-parallel linears (rows): [r*s, (r+1)*s) with s = rows / T;
- o_proj/down_proj (row-parallel, columns): [:, r*k, (r+1)*k) with k = input_size_per_partition;
- embed_tokens/lm_head (vocab rows): [start, end) from the layer's shard_indices (padding rows stay 0);
- norms: whole on every rank, counted on rank 0;
- mixture-of-experts: each HF expert tensor in the layer's fused w13/w2 (engines.moe_layout).

On CPU, vLLM repacks linear weights for its GEMM kernels at load time (`layer.cpu_linear`), and for
most linears replaces `layer.weight` with an empty tensor. A parameter written by ES must therefore be
re-packed after each write (`Target.packed_modules`); `Target.removed` says the weight only exists
inside the packed kernel, so a write assembles it in a temporary buffer first.
"""

from __future__ import annotations

import dataclasses

import torch

from engines.architectures import TESTED_ARCHITECTURES
from engines.moe_layout import ExpertPacking, as_rows, expert_parts, expert_piece, routed_experts
from kernels import Slice


@dataclasses.dataclass
class Piece:
    """The part of one HF tensor this rank holds: rows [offset, offset + rows) of its target."""

    hf_name: str
    hf_shape: tuple[int, ...]
    rows: tuple[int, int] | None  # HF rows (elements, for a vector) held here; None: all
    cols: tuple[int, int] | None  # HF columns held here (row-parallel layers); None: all
    offset: int
    counted: bool = True  # False for a replica that another rank reports

    @property
    def local_shape(self) -> tuple[int, ...]:
        shape = list(self.hf_shape)
        if self.rows:
            shape[0] = self.rows[1] - self.rows[0]
        if self.cols:
            shape[1] = self.cols[1] - self.cols[0]
        return tuple(shape)

    @property
    def slice(self) -> Slice:
        """Where the local part lies in the full tensor, for the noise (kernels.definition)."""
        if len(self.hf_shape) == 1:
            return Slice(0, self.rows[0] if self.rows else 0, self.hf_shape[0])
        width = self.hf_shape[1]
        return Slice(self.rows[0] if self.rows else 0, self.cols[0] if self.cols else 0, width)

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of the full HF tensor."""
        part = full
        if self.rows:
            part = part[self.rows[0] : self.rows[1]]
        if self.cols:
            part = part[:, self.cols[0] : self.cols[1]]
        return part


@dataclasses.dataclass
class Target:
    """One vLLM parameter that ES writes, with the HF tensor parts it is made of."""

    module: torch.nn.Module
    attr: str  # "weight" or "bias"
    vllm_name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    pieces: list[Piece]
    packed_modules: list[torch.nn.Module]  # modules whose CPU kernel holds a packed copy
    removed: bool  # the parameter is empty: its values live only in the packed kernel
    experts: ExpertPacking | None = None  # a fused expert parameter, seen as a matrix of rows

    def param(self) -> torch.nn.Parameter:
        return getattr(self.module, self.attr)


def tp_rank_and_size() -> tuple[int, int]:
    try:
        from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

        return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
    except (ImportError, AssertionError):  # no vLLM distributed state (e.g. a plain model in a test)
        return 0, 1


def build_targets(model: torch.nn.Module, hf_shapes: dict[str, tuple[int, ...]]) -> list[Target]:
    """Map every HF tensor onto the vLLM model; fail if any vLLM parameter would be left out."""
    rank, size = tp_rank_and_size()
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
        expert = expert_parts(hf_name)
        if expert is not None:  # one expert's projection inside the layer's fused w13/w2 (engines.moe_layout)
            module_path, module = routed_experts(model, expert[0])
            attr, piece = expert_piece(module, expert[1], expert[2], hf_name, tuple(shape), rank, size)
        elif leaf in packed_names:
            fused = packed_names[leaf]
            module_path = f"{parent}.{fused}" if parent else fused
            module = _unwrapped(model.get_submodule(module_path))
            index = model.packed_modules_mapping[fused].index(leaf)
            piece = _fused_piece(module, index, hf_name, tuple(shape), rank, size)
        else:
            try:
                module = _unwrapped(model.get_submodule(module_path))
            except AttributeError:
                raise ValueError(
                    f"HF tensor {hf_name!r} has no module {module_path!r} in the vLLM model "
                    f"({type(model).__name__}); this architecture's name mapping is not supported "
                    f"(tested: {', '.join(TESTED_ARCHITECTURES.values())})"
                ) from None
            piece = _plain_piece(module, attr, hf_name, tuple(shape), rank, size)
        vllm_name = f"{module_path}.{attr}"
        if vllm_name not in targets:
            targets[vllm_name] = _new_target(model, module, attr, vllm_name, dtype)
        targets[vllm_name].pieces.append(piece)
    for target in targets.values():
        _settle_shape(target)
    _check_coverage(model, targets)
    return list(targets.values())


def _unwrapped(module):
    """A LoRA-serving layer wraps the real one (low-rank mode): ES writes the wrapped layer's weights."""
    if hasattr(module, "base_layer") and "LoRA" in type(module).__name__:
        return module.base_layer
    return module


def _fused_piece(module, index: int, hf_name: str, shape: tuple, rank: int, size: int) -> Piece:
    """A q/k/v slice of qkv_proj or a gate/up slice of gate_up_proj."""
    if hasattr(module, "num_kv_head_replicas"):  # QKVParallelLinear
        q_rows = module.num_heads * module.head_size
        kv_rows = module.num_kv_heads * module.head_size
        if index == 0:
            return Piece(hf_name, shape, (rank * q_rows, (rank + 1) * q_rows), None, 0)
        replicas = module.num_kv_head_replicas
        source = rank // replicas
        offset = q_rows if index == 1 else q_rows + kv_rows
        return Piece(hf_name, shape, (source * kv_rows, (source + 1) * kv_rows), None, offset,
                     counted=rank % replicas == 0)
    local = module.output_sizes[index] // size  # MergedColumnParallelLinear
    offset = sum(module.output_sizes[:index]) // size
    return Piece(hf_name, shape, (rank * local, (rank + 1) * local), None, offset)


def _plain_piece(module, attr: str, hf_name: str, shape: tuple, rank: int, size: int) -> Piece:
    kind = type(module).__name__
    if size == 1:
        return Piece(hf_name, shape, None, None, 0)
    if hasattr(module, "shard_indices"):  # VocabParallelEmbedding, ParallelLMHead
        indices = module.shard_indices
        return Piece(hf_name, shape, (indices.org_vocab_start_index, indices.org_vocab_end_index), None, 0)
    if "RowParallel" in kind:
        if attr == "bias":  # added once, on rank 0
            return Piece(hf_name, shape, None, None, 0, counted=rank == 0)
        k = module.input_size_per_partition
        return Piece(hf_name, shape, None, (rank * k, (rank + 1) * k), 0)
    if "ColumnParallel" in kind:
        local = module.output_size_per_partition
        return Piece(hf_name, shape, (rank * local, (rank + 1) * local), None, 0)
    return Piece(hf_name, shape, None, None, 0, counted=rank == 0)  # replicated (norms)


def _new_target(model, module, attr, vllm_name, dtype) -> Target:
    param = getattr(module, attr)
    if attr in ("w13_weight", "w2_weight"):
        return Target(module, attr, vllm_name, as_rows(param), param.dtype, [], [], False, ExpertPacking(module, attr))
    removed = param.numel() == 0 and attr == "weight"
    packed = [  # layers that own a packed kernel (LoRA wrappers only forward the attribute)
        m
        for m in model.modules()
        if "cpu_linear" in vars(m) and getattr(m, attr, None) is param and attr == "weight"
    ]
    if removed:
        packed = [module]
    return Target(module, attr, vllm_name, tuple(param.shape), param.dtype if not removed else dtype,
                  [], packed, removed)


def _settle_shape(target: Target) -> None:
    """Removed weights have shape (0,); their real shape is the layer's local partition."""
    if target.removed:
        module = target.module  # a replicated layer (the MoE router) has no partition sizes of its own
        target.shape = (getattr(module, "output_size_per_partition", getattr(module, "output_size", 0)),
                        getattr(module, "input_size_per_partition", getattr(module, "input_size", 0)))
    for piece in target.pieces:
        local = piece.local_shape
        if piece.offset + local[0] > target.shape[0] or local[1:] != target.shape[1:]:
            raise ValueError(
                f"HF tensor {piece.hf_name} {piece.hf_shape} (this rank's part {local}) does not fit vLLM "
                f"parameter {target.vllm_name} of shape {target.shape} at row {piece.offset}"
            )


def _check_coverage(model: torch.nn.Module, targets: dict[str, Target]) -> None:
    """Every vLLM parameter must be written by ES, all its rows (vocab padding excepted)."""
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue  # low-rank mode's adapter buffers: written by engines.lora_slots
        name = name.replace(".base_layer.", ".")
        target = targets.get(name)
        if target is None:
            raise ValueError(
                f"vLLM parameter {name} {tuple(param.shape)} maps to no HF tensor: ES would leave "
                "it unperturbed; this architecture's name mapping is not supported "
                f"(tested: {', '.join(TESTED_ARCHITECTURES.values())})"
            )
        covered = sum(p.local_shape[0] for p in target.pieces)
        is_vocab = "Embedding" in type(target.module).__name__ or "LMHead" in type(target.module).__name__
        if covered != target.shape[0] and not is_vocab:
            raise ValueError(f"vLLM parameter {name}: HF tensors cover {covered} of {target.shape[0]} rows")
