"""The ES state of one engine, whatever its backend: the fp32 master and the verbs computed from it.

A backend supplies `write_all(write)`: it calls `write(hf_name, master, dst)` for every HF tensor with
`dst` the model's storage for it (a view into a fused vLLM parameter, or a transformers parameter),
then makes the model use the new values (on vLLM's CPU backend: re-pack the kernels). Everything else,
the noise, the update arithmetic, the checksum and the export, is here once for every backend.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from esvllm.noise import check_sigma, fill_noise

CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja")

Write = Callable[[str, torch.Tensor, torch.Tensor], object]


class ESState:
    def __init__(self, master: dict[str, torch.Tensor], write_all: Callable[[Write], None], model_dir: Path | None,
                 noise_cache_bytes: int = 0):
        self._master = master
        self._write_all = write_all
        # The checkpoint's config and tokenizer files, read now: the directory the engine started
        # from (e.g. a checkpoint) may be pruned before the next export.
        self._files = {name: (Path(model_dir) / name).read_bytes() for name in CHECKPOINT_FILES
                       if model_dir is not None and (Path(model_dir) / name).is_file()}
        device = next(iter(master.values())).device
        largest = max(v.numel() for v in master.values())
        self._eps = torch.empty(largest, dtype=torch.float32, device=device)
        self._delta = torch.empty(largest, dtype=torch.float32, device=device)  # one update, all seeds
        self._perturbation: tuple[int, float] | None = None
        # The noise of the members this engine perturbed since the last update, kept so apply_update
        # need not draw it again (on CPU a draw costs more than the add). Bounded by a byte budget;
        # the buffers are reused from one iteration to the next.
        self._offsets, self._total = {}, 0
        for name, tensor in master.items():
            self._offsets[name] = (self._total, self._total + tensor.numel())
            self._total += tensor.numel()
        self._cache_slots = int(noise_cache_bytes // (self._total * 4))
        self._cache: dict[int, torch.Tensor] = {}
        self._spare: list[torch.Tensor] = []
        self._device = device

    def info(self) -> dict:
        return {
            "tensors": len(self._master),
            "parameters": sum(v.numel() for v in self._master.values()),
            "master_bytes": sum(v.numel() * v.element_size() for v in self._master.values()),
            "device": str(self._eps.device),
            "noise_cache_slots": self._cache_slots,
        }

    def perturb(self, seed: int, sigma: float) -> dict:
        check_sigma(sigma)
        seed = int(seed)
        cached = seed in self._cache
        buffer = self._cache[seed] if cached else self._cache_buffer()

        written = [0, 0]  # tensors, elements: a caller can check them against info()

        def write(name, master, dst):
            written[0] += 1
            written[1] += master.numel()
            if buffer is None:
                eps = fill_noise(self._eps[: master.numel()].view(master.shape), seed, name)
            else:
                eps = self._cached_noise(buffer, seed, name, master.shape, fill=not cached)
            self._add_noise(master, eps, sigma, dst, self._delta)

        try:
            self._write_all(write)
        except BaseException:
            if buffer is not None and not cached:  # half filled: never let apply_update read it
                self._spare.append(buffer)
            raise
        if buffer is not None:
            self._cache[seed] = buffer
        self._perturbation = (int(seed), float(sigma))
        return {"seed": int(seed), "sigma": float(sigma), "tensors": written[0], "parameters": written[1]}

    def restore(self) -> str:
        """The model's weights := the master; returns the checksum of what the engine now holds."""
        self._write_all(lambda name, master, dst: dst.copy_(master))
        self._perturbation = None
        return self.checksum()

    def apply_update(self, pairs: list[tuple[int, float]], options: dict | None = None) -> dict:
        """base += sum coeff * eps(seed), in the master's precision; the engine ends at the new base.

        `options` is the iteration's update settings from the update log (none are needed yet)."""
        pairs = [(int(s), float(c)) for s, c in pairs]
        if not all(math.isfinite(c) for _, c in pairs):
            raise ValueError(f"apply_update: non-finite coefficient in {pairs}")
        squared_norm = 0.0
        for name, master in self._master.items():
            eps = self._eps[: master.numel()].view(master.shape)
            delta = self._delta[: master.numel()].view(master.shape).zero_()
            for seed, coeff in pairs:
                if seed in self._cache:  # drawn by this engine's perturb: the same values, bit for bit
                    delta.add_(self._cached_noise(self._cache[seed], seed, name, master.shape), alpha=coeff)
                else:
                    delta.add_(fill_noise(eps, seed, name), alpha=coeff)
            master.add_(delta)
            squared_norm += float(torch.linalg.vector_norm(delta)) ** 2
        reused = sum(seed in self._cache for seed, _ in pairs)
        self._spare.extend(self._cache.values())  # the next iteration's members have new seeds
        self._cache.clear()
        self._write_all(lambda name, master, dst: dst.copy_(master))
        self._perturbation = None
        return {"applied": len(pairs), "update_norm": math.sqrt(squared_norm), "noise_reused": reused}

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

        if "config.json" not in self._files:
            raise FileNotFoundError("export needs the model's config.json: this ES state was made without a model directory")
        target = Path(path)
        staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        out_dtype = getattr(torch, dtype) if dtype else next(iter(self._master.values())).dtype
        tensors = {k: v.to(out_dtype).contiguous().cpu() for k, v in self._master.items()}
        save_file(tensors, staging / "model.safetensors", metadata={"format": "pt"})
        for name, content in self._files.items():
            (staging / name).write_bytes(content)
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

    def tensors(self) -> dict[str, torch.Tensor]:
        """The master tensors by HF name (read-only use: benchmarks size their buffers from them)."""
        return dict(self._master)

    def master_weights(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        return {n: self._master[n].float().cpu().clone() for n in names or list(self._master)}

    def _cache_buffer(self) -> torch.Tensor | None:
        """A buffer for one member's noise, or None when the budget is spent."""
        if self._spare:
            buffer = self._spare.pop()
        elif len(self._cache) + len(self._spare) < self._cache_slots:
            buffer = torch.empty(self._total, dtype=torch.float32, device=self._device)
        else:
            return None
        return buffer

    def _cached_noise(self, buffer, seed, name, shape, fill=False) -> torch.Tensor:
        start, end = self._offsets[name]
        eps = buffer[start:end].view(shape)
        return fill_noise(eps, seed, name) if fill else eps

    @staticmethod
    def _add_noise(master, eps, sigma, dst, scratch):
        """dst := master + sigma * eps, leaving eps as it was (it may be a cached member's noise)."""
        if dst.dtype == torch.float32 and master.dtype == torch.float32:
            torch.add(master, eps, alpha=sigma, out=dst)
        else:
            scratch = scratch[: eps.numel()].view(eps.shape)
            dst.copy_(torch.mul(eps, sigma, out=scratch).add_(master))


def load_checkpoint(model_dir: Path, device, dtype, skip=()) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (safetensors only: nothing is unpickled), in the master dtype."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}: ES needs a safetensors checkpoint")
    master = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                if key not in skip:
                    master[key] = handle.get_tensor(key).to(device=device, dtype=dtype)
    return master
