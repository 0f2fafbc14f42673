"""ES verbs that run inside each vLLM worker, reached through `LLM.collective_rpc(name, args)`.

Loaded by vLLM as `worker_extension_cls="engines.vllm_worker.ESWorkerExtension"`. The worker keeps
an fp32 master copy of its part of every HF tensor (the base weights; engines.es_state) and writes
the model's weights from it:

    perturb(seed, sigma)   weights := base + sigma * eps(seed)
    restore()              weights := base, by copy from the master (bit-exact, no drift); its checksums
    apply_update(pairs)    base += sum_i coeff_i * eps(seed_i), accumulated in the master
    checksum()             digests of the weights the model serves (read through its kernels) and of the master
    master_checksum()      digest of the master alone (the base)
    export(path)           HF checkpoint of the base weights
    read_weights(names)    effective weights under HF names, read back through the compute kernels

With tensor parallelism every rank runs these on its shard; the `*_part(s)` verbs return what the
engine actor combines across ranks (engines.ranks). This module is the vLLM-specific part: where each
HF tensor lives (engines.layout) and the CPU backend's packed kernels, re-packed after every write.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from engines.es_state import ESState
from engines.safetensors_io import load_checkpoint
from engines.layout import Target, build_targets, tp_rank_and_size
from engines.lora_slots import LoRASlots

logger = logging.getLogger(__name__)


class ESWorkerExtension(LoRASlots):
    """Mixed into vLLM's worker class; `self.model_runner` is the worker's. Low-rank mode's adapter
    slots are engines.lora_slots."""

    # ---- set-up -------------------------------------------------------------------------------
    def es_init(self, master_dtype: str = "float32", noise_cache_bytes: int = 0, noise_mode: str = "iid") -> dict:
        """Load this rank's part of the base weights into the master and map them onto the model."""
        model = self.model_runner.model
        model_dir = Path(self.model_runner.model_config.model)
        device = next(p.device for p in model.parameters())
        tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
        # A tied model's lm_head.weight is embed_tokens.weight: one tensor, one noise.
        shapes = checkpoint_shapes(model_dir, skip={"lm_head.weight"} if tied else set())
        self._targets: list[Target] = build_targets(model, shapes)
        self._by_hf = {p.hf_name: (t, p) for t in self._targets for p in t.pieces}
        master = load_checkpoint(model_dir, device, getattr(torch, master_dtype), skip=set(),
                                 parts={name: piece for name, (_, piece) in self._by_hf.items()})
        self._master = master
        check_expert_layout(self._targets, master)
        self._device = device
        self._rank, self._world = tp_rank_and_size()
        self._es = ESState(master, self._write_all, model_dir, noise_cache_bytes,
                           slices={name: piece.slice for name, (_, piece) in self._by_hf.items()},
                           counted={name for name, (_, piece) in self._by_hf.items() if piece.counted},
                           noise_mode=noise_mode, read_all=self._read_all)
        return {
            **self._es.info(),
            "rank": self._rank,
            "packed": [t.vllm_name for t in self._targets if t.packed_modules],
            "removed": [t.vllm_name for t in self._targets if t.removed],
        }

    # ---- the ES verbs (engines.es_state), reached by collective_rpc ----------------------------
    def perturb(self, seed: int, sigma: float, sign: int = 1, mirror: bool = False) -> dict:
        return self._es.perturb(seed, sigma, sign, mirror)

    def perturb_lowrank(self, seed: int, sigma: float, rank: int) -> dict:
        return self._es.perturb_lowrank(seed, sigma, rank)

    def restore(self) -> str:
        return self._es.restore()

    def apply_update(self, pairs: list[tuple[int, float]], options: dict | None = None) -> dict:
        return self._es.apply_update(pairs, options)

    def checksum(self) -> dict[str, str]:
        return self._es.checksum()

    def master_checksum(self) -> str:
        return self._es.master_checksum()

    def export(self, path: str, dtype: str | None = None) -> str:
        return self._es.export(path, dtype)

    def master_weights(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        return self._es.master_weights(names)

    def read_weights(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Effective weights (float32, CPU) under HF names; packed linears are read through their kernel."""
        return {name: part["tensor"] for name, part in self.read_weight_parts(names).items()}

    # ---- per-rank parts, combined by the engine actor under tensor parallelism ------------------
    def checksum_parts(self) -> dict:
        return self._es.checksum_parts()

    def read_weight_parts(self, names: list[str] | None = None) -> dict[str, dict]:
        out = {}
        kernel_cache: dict[int, torch.Tensor] = {}
        for name in names or list(self._master):
            target, piece = self._by_hf[name]
            full = self._effective(target, kernel_cache)
            local = full[piece.offset : piece.offset + piece.local_shape[0]].float().cpu().clone()
            out[name] = _part(piece, local)
        return out

    def master_weight_parts(self, names: list[str] | None = None) -> dict[str, dict]:
        return {name: _part(self._by_hf[name][1], tensor)
                for name, tensor in self._es.master_weights(names).items()}

    def export_part(self, directory: str) -> dict[str, dict]:
        """This rank's master tensors to DIRECTORY/rank<r>.safetensors, and where each belongs."""
        from safetensors.torch import save_file

        tensors = {name: t.contiguous().cpu() for name, t in self._es.tensors().items()}
        save_file(tensors, str(Path(directory) / f"rank{self._rank}.safetensors"))
        return {name: _part(self._by_hf[name][1], None) for name in tensors}

    @property
    def es_state(self) -> ESState:
        return self._es

    # ---- internals ----------------------------------------------------------------------------
    def _write_all(self, write) -> None:
        """For every target: write each HF part with `write(name, master, dst)`, then re-pack."""
        with torch.no_grad():
            for target in self._targets:
                if target.removed or target.experts:
                    full = torch.empty(target.shape, dtype=target.dtype, device=self._device)
                else:
                    full = target.param().data
                for piece in target.pieces:
                    dst = full[piece.offset : piece.offset + piece.local_shape[0]]
                    write(piece.hf_name, self._master[piece.hf_name], dst)
                if target.removed:
                    target.module.weight = torch.nn.Parameter(full, requires_grad=False)
                if target.experts:  # in place, in the order the MoE kernel reads
                    target.param().data.copy_(target.experts.pack(full))
                _repack(target)

    def _read_all(self, read) -> None:
        """For every HF part: `read(name, served)` with the values the model computes with."""
        cache: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for target in self._targets:
                full = self._effective(target, cache)
                for piece in target.pieces:
                    read(piece.hf_name, full[piece.offset : piece.offset + piece.local_shape[0]])
                cache.clear()  # one target's read at a time

    def _effective(self, target: Target, cache: dict[int, torch.Tensor]) -> torch.Tensor:
        if id(target) in cache:
            return cache[id(target)]
        if target.experts:
            value = target.experts.unpack(target.param().data)
        elif not target.packed_modules:
            value = target.param().data
        else:
            reads = [_read_through_kernel(m, target.shape[1], target.dtype) for m in target.packed_modules]
            value = reads[0]
            for other in reads[1:] + ([] if target.removed else [target.param().data]):
                if not torch.equal(other[: value.shape[0]], value[: other.shape[0]]):
                    raise RuntimeError(f"{target.vllm_name}: packed kernel and parameter disagree")
        cache[id(target)] = value
        return value


def check_expert_layout(targets: list[Target], master: dict[str, torch.Tensor]) -> None:
    """The experts as vLLM loaded them, read in the order engines.moe_layout assumes, must be the
    checkpoint's: a MoE kernel backend that keeps them in another layout is refused, not trained wrong."""
    for target in targets:
        if target.experts is None:
            continue
        rows = target.experts.unpack(target.param().data)
        for piece in target.pieces:
            loaded = rows[piece.offset : piece.offset + piece.local_shape[0]]
            if not torch.equal(loaded, master[piece.hf_name].to(loaded.dtype)):
                raise ValueError(f"{target.vllm_name}: {piece.hf_name} is not where engines.moe_layout expects it "
                                 "(this vLLM MoE kernel backend keeps the experts in another layout); not supported")


def _part(piece, tensor) -> dict:
    return {"shape": piece.hf_shape, "rows": piece.rows, "cols": piece.cols, "tensor": tensor}


def checkpoint_shapes(model_dir: Path, skip: set[str]) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes from the safetensors headers (no tensor is read)."""
    from safetensors import safe_open

    shapes = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                if key not in skip:
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def _repack(target: Target) -> None:
    if not target.packed_modules:
        return
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    for module in target.packed_modules:
        # Drop the old kernel first, so the new one reuses its memory instead of the heap growing.
        module.cpu_linear = None
        dispatch_cpu_unquantized_gemm(module, remove_weight=target.removed)


def _read_through_kernel(module: torch.nn.Module, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """W from the packed kernel itself: cpu_linear(I) = I @ W^T."""
    eye = torch.eye(in_features, dtype=dtype)
    return module.cpu_linear(eye, module.weight, None).t().contiguous()
