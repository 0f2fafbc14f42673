"""ES verbs that run inside each vLLM worker, reached through `LLM.collective_rpc(name, args)`.

Loaded by vLLM as `worker_extension_cls="engines.vllm_worker.ESWorkerExtension"`. The worker keeps
an fp32 master copy of every HF tensor (the base weights) and writes the model's weights from it:

    perturb(seed, sigma)   weights := base + sigma * eps(seed)
    restore()              weights := base, by copy from the master (bit-exact, no drift)
    apply_update(pairs)    base += sum_i coeff_i * eps(seed_i), accumulated in the master
    checksum()             digest of the master and the current perturbation
    export(path)           HF checkpoint of the base weights
    read_weights(names)    effective weights under HF names, read back through the compute kernels

eps is `esvllm.noise.fill_noise`, the project's one noise definition.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch

from engines.layout import Target, build_targets
from esvllm.noise import fill_noise

logger = logging.getLogger(__name__)

CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja")


class ESWorkerExtension:
    """Mixed into vLLM's worker class; `self.model_runner` is the worker's."""

    # ---- set-up -------------------------------------------------------------------------------
    def es_init(self, master_dtype: str = "float32") -> dict:
        """Load the base weights from the checkpoint into the master and map them onto the model."""
        model = self.model_runner.model
        model_dir = Path(self.model_runner.model_config.model)
        device = next(p.device for p in model.parameters())
        self._model_dir = model_dir
        self._master = _load_checkpoint(model_dir, device, getattr(torch, master_dtype), model)
        self._targets: list[Target] = build_targets(model, {k: tuple(v.shape) for k, v in self._master.items()})
        self._by_hf = {p.hf_name: (t, p) for t in self._targets for p in t.pieces}
        largest = max(v.numel() for v in self._master.values())
        self._eps = torch.empty(largest, dtype=torch.float32, device=device)
        self._delta = torch.empty(largest, dtype=torch.float32, device=device)  # one update, all seeds
        self._perturbation: tuple[int, float] | None = None
        return {
            "tensors": len(self._master),
            "parameters": sum(v.numel() for v in self._master.values()),
            "master_bytes": sum(v.numel() * v.element_size() for v in self._master.values()),
            "packed": [t.vllm_name for t in self._targets if t.packed_modules],
            "removed": [t.vllm_name for t in self._targets if t.removed],
            "device": str(device),
        }

    # ---- the ES verbs -------------------------------------------------------------------------
    def perturb(self, seed: int, sigma: float) -> dict:
        _check_sigma(sigma)
        self._write_all(lambda name, master, dst: self._add_noise(master, seed, name, sigma, dst))
        self._perturbation = (int(seed), float(sigma))
        return {"seed": int(seed), "sigma": float(sigma)}

    def restore(self) -> dict:
        self._write_all(lambda name, master, dst: dst.copy_(master))
        self._perturbation = None
        return {"restored": True}

    def apply_update(self, pairs: list[tuple[int, float]]) -> dict:
        """base += sum coeff * eps(seed), in the master's precision; the engine ends at the new base."""
        pairs = [(int(s), float(c)) for s, c in pairs]
        if not all(math.isfinite(c) for _, c in pairs):
            raise ValueError(f"apply_update: non-finite coefficient in {pairs}")
        squared_norm = 0.0
        for name, master in self._master.items():
            eps = self._eps[: master.numel()].view(master.shape)
            delta = self._delta[: master.numel()].view(master.shape).zero_()
            for seed, coeff in pairs:
                delta.add_(fill_noise(eps, seed, name), alpha=coeff)
            master.add_(delta)
            squared_norm += float(torch.linalg.vector_norm(delta)) ** 2
        self.restore()
        return {"applied": len(pairs), "update_norm": math.sqrt(squared_norm)}

    def checksum(self, base_only: bool = False) -> str:
        """Digest of the master (bit-exact, order-sensitive per tensor) and, unless `base_only`, the
        current perturbation."""
        digest = hashlib.blake2b(digest_size=16)
        for name, master in self._master.items():
            ints = master.view(torch.int32) if master.element_size() == 4 else master.view(torch.int16)
            weights = torch.arange(1, 8, device=ints.device, dtype=torch.int64)
            flat = ints.reshape(-1)
            # Two sums: plain, and weighted by position mod 7, so swapped elements change it too.
            total = int(flat.sum(dtype=torch.int64))
            positional = int((flat[: flat.numel() // 7 * 7].view(-1, 7).to(torch.int64) * weights).sum())
            digest.update(f"{name}:{total}:{positional};".encode())
        if not base_only:
            digest.update(repr(self._perturbation).encode())
        return digest.hexdigest()

    def export(self, path: str, dtype: str | None = None) -> str:
        """Write the base weights as an HF checkpoint directory (atomically: temp dir, then rename)."""
        from safetensors.torch import save_file

        target = Path(path)
        staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        out_dtype = getattr(torch, dtype) if dtype else next(iter(self._master.values())).dtype
        tensors = {k: v.to(out_dtype).contiguous().cpu() for k, v in self._master.items()}
        save_file(tensors, staging / "model.safetensors", metadata={"format": "pt"})
        for name in CHECKPOINT_FILES:
            if (self._model_dir / name).is_file():
                shutil.copy2(self._model_dir / name, staging / name)
        config = json.loads((staging / "config.json").read_text())
        dtype_name = str(out_dtype).removeprefix("torch.")
        for key in ("torch_dtype", "dtype"):
            if key in config:
                config[key] = dtype_name
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old)
        else:
            os.rename(staging, target)
        return str(target)

    def read_weights(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Effective weights (float32, CPU) under HF names; packed linears are read through their kernel."""
        out = {}
        kernel_cache: dict[int, torch.Tensor] = {}
        for name in names or list(self._master):
            target, piece = self._by_hf[name]
            full = self._effective(target, kernel_cache)
            out[name] = full[piece.offset : piece.offset + piece.shape[0]].float().cpu().clone()
        return out

    def master_weights(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        return {n: self._master[n].float().cpu().clone() for n in names or list(self._master)}

    # ---- internals ----------------------------------------------------------------------------
    def _add_noise(self, master, seed, name, sigma, dst):
        eps = fill_noise(self._eps[: master.numel()].view(master.shape), seed, name)
        if dst.dtype == torch.float32 and master.dtype == torch.float32:
            torch.add(master, eps, alpha=sigma, out=dst)
        else:
            dst.copy_(eps.mul_(sigma).add_(master))

    def _write_all(self, write) -> None:
        """For every target: write each HF piece with `write(name, master, dst)`, then re-pack."""
        with torch.no_grad():
            for target in self._targets:
                if target.removed:
                    full = torch.empty(target.shape, dtype=target.dtype, device=self._eps.device)
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


def _return_freed_memory() -> None:
    """Re-packing frees and reallocates whole kernels; hand the freed pages back so RSS stays flat."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: nothing to trim
        pass


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


def _check_sigma(sigma: float) -> None:
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")


def _load_checkpoint(model_dir: Path, device, dtype, model) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (safetensors only: nothing is unpickled), in the master dtype."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}: ES needs a safetensors checkpoint")
    tied = getattr(model.config, "tie_word_embeddings", False) if hasattr(model, "config") else False
    master = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                if tied and key == "lm_head.weight":
                    continue  # the same tensor as embed_tokens in a tied model
                master[key] = handle.get_tensor(key).to(device=device, dtype=dtype)
    return master
