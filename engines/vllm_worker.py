"""ES verbs that run inside each vLLM worker, reached through `LLM.collective_rpc(name, args)`.

Loaded by vLLM as `worker_extension_cls="engines.vllm_worker.ESWorkerExtension"`. The worker keeps
an fp32 master copy of every HF tensor (the base weights; engines.es_state) and writes the model's
weights from it:

    perturb(seed, sigma)   weights := base + sigma * eps(seed)
    restore()              weights := base, by copy from the master (bit-exact, no drift); its checksum
    apply_update(pairs)    base += sum_i coeff_i * eps(seed_i), accumulated in the master
    checksum()             digest of the master and the current perturbation
    export(path)           HF checkpoint of the base weights
    read_weights(names)    effective weights under HF names, read back through the compute kernels

This module is the vLLM-specific part: where each HF tensor lives (engines.layout) and the CPU
backend's packed kernels, re-packed after every write.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from engines.es_state import ESState, load_checkpoint
from engines.layout import Target, build_targets

logger = logging.getLogger(__name__)


class ESWorkerExtension:
    """Mixed into vLLM's worker class; `self.model_runner` is the worker's."""

    # ---- set-up -------------------------------------------------------------------------------
    def es_init(self, master_dtype: str = "float32", noise_cache_bytes: int = 0) -> dict:
        """Load the base weights from the checkpoint into the master and map them onto the model."""
        model = self.model_runner.model
        model_dir = Path(self.model_runner.model_config.model)
        device = next(p.device for p in model.parameters())
        tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
        # A tied model's lm_head.weight is embed_tokens.weight: one tensor, one noise.
        master = load_checkpoint(model_dir, device, getattr(torch, master_dtype), skip={"lm_head.weight"} if tied else ())
        self._targets: list[Target] = build_targets(model, {k: tuple(v.shape) for k, v in master.items()})
        self._by_hf = {p.hf_name: (t, p) for t in self._targets for p in t.pieces}
        self._master = master
        self._device = device
        self._es = ESState(master, self._write_all, model_dir, noise_cache_bytes)
        return {
            **self._es.info(),
            "packed": [t.vllm_name for t in self._targets if t.packed_modules],
            "removed": [t.vllm_name for t in self._targets if t.removed],
        }

    # ---- the ES verbs (engines.es_state), reached by collective_rpc ----------------------------
    def perturb(self, seed: int, sigma: float) -> dict:
        return self._es.perturb(seed, sigma)

    def restore(self) -> str:
        return self._es.restore()

    def apply_update(self, pairs: list[tuple[int, float]], options: dict | None = None) -> dict:
        return self._es.apply_update(pairs, options)

    def checksum(self, base_only: bool = False) -> str:
        return self._es.checksum(base_only)

    def export(self, path: str, dtype: str | None = None) -> str:
        return self._es.export(path, dtype)

    def master_weights(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        return self._es.master_weights(names)

    def read_weights(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Effective weights (float32, CPU) under HF names; packed linears are read through their kernel."""
        out = {}
        kernel_cache: dict[int, torch.Tensor] = {}
        for name in names or list(self._master):
            target, piece = self._by_hf[name]
            full = self._effective(target, kernel_cache)
            out[name] = full[piece.offset : piece.offset + piece.shape[0]].float().cpu().clone()
        return out

    @property
    def es_state(self) -> ESState:
        return self._es

    # ---- internals ----------------------------------------------------------------------------
    def _write_all(self, write) -> None:
        """For every target: write each HF piece with `write(name, master, dst)`, then re-pack."""
        with torch.no_grad():
            for target in self._targets:
                if target.removed:
                    full = torch.empty(target.shape, dtype=target.dtype, device=self._device)
                else:
                    full = target.param().data
                for piece in target.pieces:
                    write(piece.hf_name, self._master[piece.hf_name], full[piece.offset : piece.offset + piece.shape[0]])
                if target.removed:
                    target.module.weight = torch.nn.Parameter(full, requires_grad=False)
                _repack(target)

    def _effective(self, target: Target, cache: dict[int, torch.Tensor]) -> torch.Tensor:
        if id(target) in cache:
            return cache[id(target)]
        if not target.packed_modules:
            value = target.param().data
        else:
            reads = [_read_through_kernel(m, target.shape[1], target.dtype) for m in target.packed_modules]
            value = reads[0]
            for other in reads[1:] + ([] if target.removed else [target.param().data]):
                if not torch.equal(other[: value.shape[0]], value[: other.shape[0]]):
                    raise RuntimeError(f"{target.vllm_name}: packed kernel and parameter disagree")
        cache[id(target)] = value
        return value


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
