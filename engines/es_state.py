"""The ES state of one engine, whatever its backend: the fp32 master and the verbs computed from it.

A backend supplies `write_all(write)`: it calls `write(hf_name, master, dst)` for every HF tensor with
`dst` the model's storage for it (a view into a fused vLLM parameter, or a transformers parameter),
then makes the model use the new values (on vLLM's CPU backend: re-pack the kernels). Everything else,
the noise, the update arithmetic, the checksum and the export, is here once for every backend.

Under tensor parallelism a rank's master holds only its shard of each HF tensor; `slices` says where
the shard lies in the full tensor (esvllm.noise draws exactly those elements), and `counted` which
tensors this rank reports in checksums and norms (a tensor replicated on every rank counts once).
On CUDA the noise is computed inside fused kernels (esvllm.noise_triton) and never stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from engines.optimizer import OPTIMIZER_FILE, Optimizer
from esvllm import noise_cpu
from esvllm.noise import check_sigma, fill_noise_rows, philox_key

CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja")
CHECKSUM_CHUNK = 7 * 2**20  # elements per step of the checksum: no tensor-sized temporaries

Write = Callable[[str, torch.Tensor, torch.Tensor], object]


@dataclasses.dataclass(frozen=True)
class Slice:
    """Where a (rows x width) shard lies in its full HF tensor: element (row0 + r) * row_stride + col0 + c."""

    row0: int = 0
    col0: int = 0
    row_stride: int = 0


def as_rows(tensor: torch.Tensor) -> torch.Tensor:
    """A 2-D (rows, width) view: a matrix as it is, a vector as one row."""
    return tensor.view(tensor.shape[0], -1) if tensor.dim() >= 2 else tensor.view(1, -1)


def full_slice(tensor: torch.Tensor) -> Slice:
    return Slice(0, 0, as_rows(tensor).shape[1])


class ESState:
    def __init__(self, master: dict[str, torch.Tensor], write_all: Callable[[Write], None], model_dir: Path | None,
                 noise_cache_bytes: int = 0, slices: dict[str, Slice] | None = None,
                 counted: set[str] | None = None, noise_mode: str = "iid"):
        self._master = master
        self._write_all = write_all
        # The checkpoint's config and tokenizer files, read now: the directory the engine started
        # from (e.g. a checkpoint) may be pruned before the next export.
        self._files = {name: (Path(model_dir) / name).read_bytes() for name in CHECKPOINT_FILES
                       if model_dir is not None and (Path(model_dir) / name).is_file()}
        self._slices = {name: (slices or {}).get(name) or full_slice(t) for name, t in master.items()}
        self._counted = set(master) if counted is None else set(counted)
        device = next(iter(master.values())).device
        self._device = device
        self._cuda = device.type == "cuda"
        largest = max(v.numel() for v in master.values())
        self._eps = torch.empty(0 if self._cuda else largest, dtype=torch.float32, device=device)
        self._delta = torch.empty(largest, dtype=torch.float32, device=device)  # one update, all seeds
        self._perturbation: tuple[int, float] | None = None
        # CPU: the noise of the members this engine perturbed since the last update, kept so
        # apply_update need not draw it again (a draw costs more than the add there). Bounded by a
        # byte budget; the buffers are reused from one iteration to the next. On CUDA the fused
        # kernels draw noise faster than a buffer could be read back, so there is no cache.
        self._offsets, self._total = {}, 0
        for name, tensor in master.items():
            self._offsets[name] = (self._total, self._total + tensor.numel())
            self._total += tensor.numel()
        self._cache_slots = 0 if self._cuda else int(noise_cache_bytes // (self._total * 4))
        self._cache: dict[int, torch.Tensor] = {}
        self._spare: list[torch.Tensor] = []
        self._mirror: tuple[int, torch.Tensor | None] = (-1, None)  # (seed, its noise) kept for an antithetic mirror
        self._draws = 0  # whole-model noise draws since the last update (CPU)
        if noise_mode not in ("iid", "paper_correlated"):
            raise ValueError(f"noise {noise_mode!r}: use iid or paper_correlated")
        # paper_correlated: one noise stream per member for every tensor, as the paper's first scripts
        # seeded each tensor with the member's seed (same-shaped tensors get the same noise).
        self._correlated = noise_mode == "paper_correlated"
        self._optimizer = Optimizer(master)
        if model_dir is not None and (Path(model_dir) / OPTIMIZER_FILE).is_file():
            self._optimizer.load(Path(model_dir) / OPTIMIZER_FILE)
    def info(self) -> dict:
        return {
            "tensors": len(self._counted),
            "parameters": sum(v.numel() for n, v in self._master.items() if n in self._counted),
            "master_bytes": sum(v.numel() * v.element_size() for v in self._master.values()),
            "device": str(self._device),
            "noise_cache_slots": self._cache_slots,
            **({"noise_kernel": "triton"} if self._cuda else noise_cpu.describe()),
        }

    # ---- the verbs --------------------------------------------------------------------------------
    def perturb(self, seed: int, sigma: float, sign: int = 1, mirror: bool = False) -> dict:
        """weights := base + sign * sigma * eps(seed). With `mirror`, the draw is kept (CPU) for the
        antithetic mirror, the same seed with the other sign, which then draws nothing."""
        check_sigma(sigma)
        seed, sign = int(seed), (1 if sign >= 0 else -1)
        signed_sigma = sign * sigma
        if seed in self._cache:
            buffer, fill = self._cache[seed], False
        elif self._mirror[0] == seed:
            buffer, fill = self._mirror[1], False
        else:
            buffer, fill = self._cache_buffer(), True
            if buffer is None and mirror and not self._cuda:  # no cache slot: keep this draw for the mirror
                buffer = self._mirror[1] if self._mirror[1] is not None else \
                    torch.empty(self._total, dtype=torch.float32, device=self._device)
                self._mirror = (-1, buffer)
        drawn = not self._cuda and (fill or buffer is None)
        written = [0, 0]  # tensors, elements: a caller can check them against info()

        def write(name, master, dst):
            if name in self._counted:
                written[0] += 1
                written[1] += master.numel()
            if self._cuda:
                from esvllm.noise_triton import perturb_rows

                perturb_rows(as_rows(dst), as_rows(master), self._key(seed, name), signed_sigma, *self._where(name))
                return
            if buffer is None:
                eps, draw = self._eps[: master.numel()].view(master.shape), True
            else:
                eps, draw = self._cached_noise(buffer, name, master.shape), fill
            if draw and self._perturb_fused(eps, master, dst, seed, name, signed_sigma):
                return
            if draw:
                self._draw(eps, seed, name)
            self._add_noise(master, eps, signed_sigma, dst, self._delta)

        try:
            self._write_all(write)
        except BaseException:
            if fill and buffer is not None and buffer is not self._mirror[1]:  # half filled: never read it
                self._spare.append(buffer)
            raise
        if fill and buffer is not None:
            if buffer is self._mirror[1]:
                self._mirror = (seed, buffer)
            else:
                self._cache[seed] = buffer
        self._draws += drawn
        self._perturbation = (int(seed), float(signed_sigma))
        return {"seed": int(seed), "sigma": float(sigma), "sign": sign, "tensors": written[0],
                "parameters": written[1], "drawn": drawn}

    def perturb_lowrank(self, seed: int, sigma: float, rank: int) -> dict:
        """The dense form of a low-rank member (esvllm.lowrank): every block linear's weight :=
        W + sigma * A B^T / sqrt(r); other tensors stay at the base. The reference a LoRA engine's
        batched members are checked against, and what the HF and fake backends run."""
        from esvllm.lowrank import combined_update

        check_sigma(sigma)

        def write(name, master, dst):
            if is_lowrank_target(name, master):
                dst.copy_(master + combined_update([(seed, sigma)], name, tuple(master.shape), rank, master.device))
            else:
                dst.copy_(master)

        self._write_all(write)
        self._perturbation = (int(seed), float(sigma), "lowrank", int(rank))
        return {"seed": int(seed), "sigma": float(sigma), "rank": int(rank)}

    def restore(self) -> str:
        """The model's weights := the master; returns the checksum of what the engine now holds."""
        self._write_all(lambda name, master, dst: dst.copy_(master))
        self._perturbation = None
        return self.checksum()

    def apply_update(self, pairs: list[tuple[int, float]], options: dict | None = None) -> dict:
        """base += sum coeff * eps(seed) (the paper's step), or, with options {"optimizer": "momentum" or
        "adam", ...}, the optimizer's step on the gradient estimate g = sum coeff * eps(seed); in the
        master's precision. The engine ends at the new base."""
        pairs = [(int(s), float(c)) for s, c in pairs]
        if not all(math.isfinite(c) for _, c in pairs):
            raise ValueError(f"apply_update: non-finite coefficient in {pairs}")
        options = options or {}
        squared_norm = 0.0
        rank = options.get("rank") if options.get("perturbation") == "lowrank" else None
        for name, master in self._master.items():
            delta = self._delta[: master.numel()].view(master.shape)
            if rank is None:
                self._combine(delta, pairs, name)
            elif is_lowrank_target(name, master):
                from esvllm.lowrank import combined_update

                delta.copy_(combined_update(pairs, name, tuple(master.shape), int(rank), master.device))
            else:
                continue  # low-rank mode perturbs and trains the block linears only
            self._optimizer.step(name, master, delta, options)  # delta becomes the step taken
            if name in self._counted:
                squared_norm += float(torch.linalg.vector_norm(delta)) ** 2
        reused = sum(seed in self._cache or seed == self._mirror[0] for seed, _ in pairs)
        draws, self._draws = self._draws, 0
        self._spare.extend(self._cache.values())  # the next iteration's members have new seeds
        self._cache.clear()
        self._mirror = (-1, self._mirror[1])
        self._write_all(lambda name, master, dst: dst.copy_(master))
        self._perturbation = None
        return {"applied": len(pairs), "update_norm": math.sqrt(squared_norm), "squared_norm": squared_norm,
                "noise_reused": reused, "perturb_draws": draws}

    def checksum_parts(self) -> dict[str, tuple[int, int]]:
        """Per counted HF tensor: the sum of its elements' bits as integers, and the same weighted by
        (global element index mod 7) + 1, so swapped elements change it too. Both are sums, so the
        shards of a tensor-parallel engine add up to the unsharded tensor's figures."""
        parts = {}
        for name, master in self._master.items():
            if name not in self._counted:
                continue
            ints = as_rows(master.view(torch.int32) if master.element_size() == 4 else master.view(torch.int16))
            where = self._slices[name]
            fast = None  # the C kernel: the same sums, about 20x faster on CPU
            if not self._cuda and ints.is_contiguous():
                fast = noise_cpu.checksum_rows(ints, where.row0, where.col0, where.row_stride)
            parts[name] = fast or self._checksum_torch(ints, where)
        return parts

    @staticmethod
    def _checksum_torch(ints: torch.Tensor, where: Slice) -> tuple[int, int]:
        """checksum_parts' figures of one tensor in torch integer ops (CUDA, and the C kernel's reference)."""
        rows, width = ints.shape
        total = positional = 0
        step = max(1, CHECKSUM_CHUNK // width)
        columns = torch.arange(width, device=ints.device, dtype=torch.int64)
        for r in range(0, rows, step):
            block = ints[r : r + step].to(torch.int64)
            row_ids = torch.arange(r, r + block.shape[0], device=ints.device, dtype=torch.int64)[:, None]
            index = (where.row0 + row_ids) * where.row_stride + where.col0 + columns
            total += int(block.sum())
            positional += int((block * (index % 7 + 1)).sum())
        return total, positional

    def checksum(self, base_only: bool = False) -> str:
        """Digest of the master (bit-exact) and, unless `base_only`, the current perturbation."""
        return digest_checksum(self.checksum_parts(), None if base_only else self._perturbation)

    @property
    def perturbation(self) -> tuple[int, float] | None:
        return self._perturbation

    def export(self, path: str, dtype: str | None = None) -> str:
        """Write the base weights as an HF checkpoint directory, one tensor at a time, in shards of at
        most 5 GB (atomically: a temporary directory, then a rename), with the optimizer's state if any."""
        out_dtype = getattr(torch, dtype) if dtype else next(iter(self._master.values())).dtype
        entries = [(name, tuple(t.shape), out_dtype, lambda t=t: t) for name, t in self._master.items()]
        return export_checkpoint(path, entries, self._files, out_dtype, self._optimizer.save)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The master tensors by HF name (read-only use: benchmarks size their buffers from them)."""
        return dict(self._master)

    def master_weights(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        return {n: self._master[n].float().cpu().clone() for n in names or list(self._master)}

    # ---- noise ------------------------------------------------------------------------------------
    def _where(self, name: str) -> tuple[int, int, int]:
        where = self._slices[name]
        return where.row0, where.col0, where.row_stride

    def _key(self, seed: int, name: str) -> tuple[int, int]:
        return philox_key(seed, "" if self._correlated else name)

    def _draw(self, out: torch.Tensor, seed: int, name: str) -> torch.Tensor:
        fill_noise_rows(as_rows(out), seed, "" if self._correlated else name, *self._where(name))
        return out

    def _combine(self, delta: torch.Tensor, pairs: list[tuple[int, float]], name: str) -> None:
        """delta := sum coeff * eps(seed, name), summed in the pairs' order."""
        if self._cuda:
            from esvllm.noise_triton import combine_rows

            combine_rows(as_rows(delta), [self._key(s, name) for s, _ in pairs], [c for _, c in pairs],
                         *self._where(name))
            return
        # Noise this engine's perturb drew is kept: the same values, bit for bit.
        kept = [self._cache.get(seed, self._mirror[1] if seed == self._mirror[0] else None) for seed, _ in pairs]
        kept = [None if k is None else self._cached_noise(k, name, delta.shape) for k in kept]
        terms = [(self._key(seed, name), coeff, k) for (seed, coeff), k in zip(pairs, kept)]
        if delta.is_contiguous() and noise_cpu.combine_rows(as_rows(delta), terms, *self._where(name)):
            return  # the C kernel: every term added while a block of delta is in cache
        delta.zero_()
        eps = self._eps[: delta.numel()].view(delta.shape)
        for (seed, coeff), k in zip(pairs, kept):
            delta.add_(k if k is not None else self._draw(eps, seed, name), alpha=coeff)

    def _cache_buffer(self) -> torch.Tensor | None:
        """A buffer for one member's noise, or None when the budget is spent."""
        if self._spare:
            buffer = self._spare.pop()
        elif len(self._cache) + len(self._spare) < self._cache_slots:
            buffer = torch.empty(self._total, dtype=torch.float32, device=self._device)
        else:
            return None
        return buffer

    def _cached_noise(self, buffer, name, shape) -> torch.Tensor:
        """Tensor `name`'s part of a member's noise buffer."""
        start, end = self._offsets[name]
        return buffer[start:end].view(shape)

    def _perturb_fused(self, eps, master, dst, seed, name, sigma) -> bool:
        """eps := eps(seed, name) and dst := master + sigma * eps in one pass (the CPU kernel, float32
        and contiguous only); False when it does not apply."""
        if not (dst.dtype == master.dtype == torch.float32 and dst.is_contiguous() and master.is_contiguous()):
            return False
        return noise_cpu.perturb_rows(as_rows(eps), as_rows(master), as_rows(dst), sigma, self._key(seed, name),
                                      *self._where(name))

    @staticmethod
    def _add_noise(master, eps, sigma, dst, scratch):
        """dst := master + sigma * eps, leaving eps as it was (it may be a cached member's noise)."""
        if dst.dtype == torch.float32 and master.dtype == torch.float32:
            torch.add(master, eps, alpha=sigma, out=dst)
        else:
            scratch = scratch[: eps.numel()].view(eps.shape)
            dst.copy_(torch.mul(eps, sigma, out=scratch).add_(master))


def digest_checksum(parts: dict[str, tuple[int, int]], perturbation=None) -> str:
    """The checksum string of per-tensor (total, positional) sums, in sorted name order."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(parts):
        total, positional = parts[name]
        digest.update(f"{name}:{total}:{positional};".encode())
    if perturbation is not None:
        digest.update(repr(perturbation).encode())
    return digest.hexdigest()


def export_checkpoint(path: str, entries, files: dict[str, bytes], out_dtype: torch.dtype, extra=None) -> str:
    """An HF checkpoint directory from (name, shape, dtype, producer) entries and the model's config
    and tokenizer files, written atomically (temporary directory, then rename); `extra(directory)`
    adds files (the optimizer's state)."""
    from engines.safetensors_io import write_sharded

    if "config.json" not in files:
        raise FileNotFoundError("export needs the model's config.json: this ES state was made without a model directory")
    target = Path(path)
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_sharded(staging, entries)
    if extra is not None:
        extra(staging)
    for name, content in files.items():
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


def load_checkpoint(model_dir: Path, device, dtype, skip=(), parts: dict | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (safetensors only: nothing is unpickled), in the master dtype.

    With `parts` (HF name -> engines.layout.Piece), only those tensors, each cut to this rank's part
    as it is read. Each tensor is read to the host, moved to the device, then converted there (a 7B
    model's fp32 master never sits on the host whole)."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}: ES needs a safetensors checkpoint")
    master = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                if key in skip or (parts is not None and key not in parts):
                    continue
                if parts is None:
                    tensor = handle.get_tensor(key)
                else:
                    piece, view = parts[key], handle.get_slice(key)
                    rows = slice(*piece.rows) if piece.rows else slice(None)
                    tensor = view[rows] if len(piece.hf_shape) == 1 else view[rows, slice(*piece.cols) if piece.cols else slice(None)]
                master[key] = tensor.to(device=device).to(dtype=dtype)
    if parts is not None and set(parts) - set(master):
        raise ValueError(f"{model_dir}: no tensors {sorted(set(parts) - set(master))[:5]}")
    return master



def is_lowrank_target(name: str, tensor: torch.Tensor) -> bool:
    """The tensors low-rank mode perturbs and trains: the weight matrices of the transformer blocks'
    linear layers (q/k/v/o, gate/up/down), where vLLM serves LoRA adapters. Embeddings, the LM head,
    norms and biases keep their base values."""
    return tensor.dim() == 2 and ".layers." in name and name.endswith("_proj.weight")
