"""The ES state of one engine, whatever its backend: the fp32 master and the verbs computed from it.

A backend supplies `write_all(write)`: it calls `write(hf_name, master, dst)` for every HF tensor with
`dst` the model's storage for it (a view into a fused vLLM parameter, or a transformers parameter),
then makes the model use the new values (on vLLM's CPU backend: re-pack the kernels); and
`read_all(read)`: it calls `read(hf_name, served)` with the values the model computes with (on vLLM's
CPU backend read back through the packed kernels). Everything else, the noise, the update
arithmetic, the checksums and the export, is here once for every backend.

Under tensor parallelism a rank's master holds only its shard of each HF tensor; `slices` says where
the shard lies in the full tensor (the kernels draw exactly those elements), and `counted` which
tensors this rank reports in checksums and norms (a tensor replicated on every rank counts once).
The noise is computed by the kernel family (kernels.cpu or kernels.cuda, one interface); on CUDA it
is computed inside fused kernels and never stored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

import kernels
from engines import checksum
from engines.noise_cache import NoiseCache
from engines.optimizer import OPTIMIZER_FILE, Optimizer
from engines.safetensors_io import CHECKPOINT_FILES, export_checkpoint
from engines.variant import UpdateOptions
from kernels import Slice, as_rows, check_sigma, philox_key
from kernels.reference import add_noise

Write = Callable[[str, torch.Tensor, torch.Tensor], object]
Read = Callable[[str, torch.Tensor], object]


def full_slice(tensor: torch.Tensor) -> Slice:
    return Slice(0, 0, as_rows(tensor).shape[1])


class ESState:
    def __init__(self, master: dict[str, torch.Tensor], write_all: Callable[[Write], None], model_dir: Path | None,
                 noise_cache_bytes: int = 0, slices: dict[str, Slice] | None = None,
                 counted: set[str] | None = None, noise_mode: str = "iid",
                 read_all: Callable[[Read], None] | None = None):
        self._master = master
        self._write_all = write_all
        self._read_all = read_all
        # The checkpoint's config and tokenizer files, read now: the directory the engine started
        # from (e.g. a checkpoint) may be pruned before the next export.
        self._files = {name: (Path(model_dir) / name).read_bytes() for name in CHECKPOINT_FILES
                       if model_dir is not None and (Path(model_dir) / name).is_file()}
        self._slices = {name: (slices or {}).get(name) or full_slice(t) for name, t in master.items()}
        self._counted = set(master) if counted is None else set(counted)
        self._device = next(iter(master.values())).device
        self._kernels = kernels.for_device(self._device)
        on_cpu = self._device.type == "cpu"
        largest = max(v.numel() for v in master.values())
        # CPU: scratch for one tensor's noise (the CUDA kernels draw in registers).
        self._eps = torch.empty(largest if on_cpu else 0, dtype=torch.float32, device=self._device)
        self._delta = torch.empty(largest, dtype=torch.float32, device=self._device)  # one update, all seeds
        self._perturbation: tuple | None = None
        self._noise = NoiseCache(master, noise_cache_bytes, keeps=on_cpu)
        self._draws = 0  # whole-model noise draws since the last update
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
            "noise_cache_slots": self._noise.slots,
            **self._kernels.describe(),
        }

    # ---- the verbs --------------------------------------------------------------------------------
    def perturb(self, seed: int, sigma: float, sign: int = 1, mirror: bool = False) -> dict:
        """weights := base + sign * sigma * eps(seed). With `mirror`, the draw is kept (CPU) for the
        antithetic mirror, the same seed with the other sign, which then draws nothing."""
        check_sigma(sigma)
        seed, sign = int(seed), (1 if sign >= 0 else -1)
        signed_sigma = sign * sigma
        buffer = self._noise.kept(seed)
        drawing = buffer is None
        if drawing:
            buffer = self._noise.claim(mirror)
        written = [0, 0]  # tensors, elements: a caller can check them against info()

        def write(name, master, dst):
            if name in self._counted:
                written[0] += 1
                written[1] += master.numel()
            if not drawing:  # this member's noise is kept: read it, draw nothing
                add_noise(dst, master, self._noise.part(buffer, name, master.shape), signed_sigma)
                return
            eps = self._noise.part(buffer, name, master.shape) if buffer is not None else self._scratch(master)
            self._kernels.perturb(as_rows(dst), as_rows(master), self._key(seed, name), signed_sigma,
                                  self._slices[name], None if eps is None else as_rows(eps))

        try:
            self._write_all(write)
        except BaseException:
            if drawing and buffer is not None:  # half filled: never read it
                self._noise.discard(buffer)
            raise
        if drawing and buffer is not None:
            self._noise.keep(seed, buffer)
        self._draws += drawing
        self._perturbation = (seed, float(signed_sigma))
        return {"seed": seed, "sigma": float(sigma), "sign": sign, "tensors": written[0],
                "parameters": written[1], "drawn": drawing}

    def perturb_lowrank(self, seed: int, sigma: float, rank: int) -> dict:
        """The dense form of a low-rank member (kernels.lowrank): every block linear's weight :=
        W + sigma * A B^T / sqrt(r); other tensors stay at the base. The reference a LoRA engine's
        batched members are checked against, and what the HF and fake backends run."""
        from kernels.lowrank import combined_update

        check_sigma(sigma)

        def write(name, master, dst):
            if is_lowrank_target(name, master):
                dst.copy_(master + combined_update([(seed, sigma)], name, tuple(master.shape), rank, master.device))
            else:
                dst.copy_(master)

        self._write_all(write)
        self._perturbation = (int(seed), float(sigma), "lowrank", int(rank))
        return {"seed": int(seed), "sigma": float(sigma), "rank": int(rank)}

    def restore(self) -> dict[str, str]:
        """The model's weights := the master; returns the checksums of what the engine now serves and
        of its master (`checksum`)."""
        self._write_all(lambda name, master, dst: dst.copy_(master))
        self._perturbation = None
        return self.checksum()

    def apply_update(self, pairs: list[tuple[int, float]], options: UpdateOptions | dict | None = None) -> dict:
        """base += sum coeff * eps(seed) (the paper's step), or the optimizer's step (UpdateOptions:
        momentum, Adam) on the gradient estimate g = sum coeff * eps(seed); in the master's precision.
        Options come as UpdateOptions or as the update log records them. The engine ends at the new base."""
        pairs = [(int(s), float(c)) for s, c in pairs]
        if not all(math.isfinite(c) for _, c in pairs):
            raise ValueError(f"apply_update: non-finite coefficient in {pairs}")
        options = UpdateOptions.from_log(options)
        squared_norm = 0.0
        rank = options.rank if options.perturbation == "lowrank" else None
        for name, master in self._master.items():
            delta = self._delta[: master.numel()].view(master.shape)
            if rank is None:
                self._combine(delta, pairs, name)
            elif is_lowrank_target(name, master):
                from kernels.lowrank import combined_update

                delta.copy_(combined_update(pairs, name, tuple(master.shape), int(rank), master.device))
            else:
                continue  # low-rank mode perturbs and trains the block linears only
            self._optimizer.step(name, master, delta, options)  # delta becomes the step taken
            if name in self._counted:
                squared_norm += float(torch.linalg.vector_norm(delta)) ** 2
        reused = self._noise.reused(seed for seed, _ in pairs)
        draws, self._draws = self._draws, 0
        self._noise.clear()
        self._write_all(lambda name, master, dst: dst.copy_(master))
        self._perturbation = None
        return {"applied": len(pairs), "update_norm": math.sqrt(squared_norm), "squared_norm": squared_norm,
                "noise_reused": reused, "perturb_draws": draws}

    # ---- checksums (engines.checksum) ----------------------------------------------------------
    def served_parts(self) -> checksum.Parts:
        """Per counted HF tensor, the checksum sums of the values the model computes with."""
        if self._read_all is None:
            raise RuntimeError("this ES state has no model to read: only master_checksum() is defined")
        parts = {}

        def read(name, served):
            if name in self._counted:
                parts[name] = checksum.tensor_sums(self._kernels, served.contiguous(), self._slices[name])

        self._read_all(read)
        if set(parts) != self._counted:
            raise RuntimeError(f"the backend read {len(parts)} of {len(self._counted)} tensors; missing: "
                               f"{sorted(self._counted - set(parts))[:5]}")
        return parts

    def master_parts(self) -> checksum.Parts:
        """Per counted HF tensor, the checksum sums of the fp32 (or model-dtype) master."""
        return {name: checksum.tensor_sums(self._kernels, master, self._slices[name])
                for name, master in self._master.items() if name in self._counted}

    def checksum_parts(self) -> dict[str, checksum.Parts]:
        return {"served": self.served_parts(), "master": self.master_parts()}

    def checksum(self) -> dict[str, str]:
        """{"served": digest of the weights the model computes with, "master": digest of the base}."""
        return {"served": checksum.digest(self.served_parts()), "master": self.master_checksum()}

    def master_checksum(self) -> str:
        """Digest of the master (bit-exact): the base weights, whatever the model now serves."""
        return checksum.digest(self.master_parts())

    @property
    def perturbation(self) -> tuple | None:
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
    def _key(self, seed: int, name: str) -> tuple[int, int]:
        return philox_key(seed, "" if self._correlated else name)

    def _scratch(self, master: torch.Tensor) -> torch.Tensor | None:
        """CPU: the buffer a drawn tensor's noise goes to; None on CUDA (drawn inside the kernel)."""
        return self._eps[: master.numel()].view(master.shape) if self._eps.numel() else None

    def _combine(self, delta: torch.Tensor, pairs: list[tuple[int, float]], name: str) -> None:
        """delta := sum coeff * eps(seed, name), summed in the pairs' order; noise this engine's
        perturb drew is read where it is kept (the same values, bit for bit)."""
        kept = [self._noise.kept(seed) for seed, _ in pairs]
        terms = [(self._key(seed, name), coeff, None if k is None else as_rows(self._noise.part(k, name, delta.shape)))
                 for (seed, coeff), k in zip(pairs, kept)]
        self._kernels.combine(as_rows(delta), terms, self._slices[name])


def is_lowrank_target(name: str, tensor: torch.Tensor) -> bool:
    """The tensors low-rank mode perturbs and trains: the weight matrices of the transformer blocks'
    linear layers (q/k/v/o, gate/up/down), where vLLM serves LoRA adapters. Embeddings, the LM head,
    norms and biases keep their base values."""
    return tensor.dim() == 2 and ".layers." in name and name.endswith("_proj.weight")
