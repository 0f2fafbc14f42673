"""Combine the results of a tensor-parallel engine's ranks into what one unsharded engine returns.

Each rank of a vLLM engine with tensor_parallel_size > 1 holds a shard of every HF tensor (see
engines.layout); the engine actor asks every rank (`collective_rpc`) and combines here, so the
coordinator sees the same facts as from a one-GPU engine: the same checksum (integer sums over the
shards), the same counts, the whole tensors.
"""

from __future__ import annotations

import math

import torch

from engines.checksum import add_parts, digest


def checksum(results: list[dict]) -> dict[str, str]:
    """The ranks' served and master checksum parts, summed over the shards and digested."""
    return {kind: digest(add_parts([r[kind] for r in results])) for kind in ("served", "master")}


def perturb(results: list[dict]) -> dict:
    # Rank 0 holds a part of every tensor (and counts the replicated ones): its count is the engine's.
    return {**results[0], "parameters": sum(r["parameters"] for r in results)}


def apply_update(results: list[dict]) -> dict:
    squared = sum(r["squared_norm"] for r in results)
    return {**results[0], "update_norm": math.sqrt(squared), "squared_norm": squared}


def info(results: list[dict]) -> dict:
    return {**results[0], "parameters": sum(r["parameters"] for r in results),
            "master_bytes": sum(r["master_bytes"] for r in results), "ranks": len(results)}


def assemble(results: list[dict[str, dict]]) -> dict[str, torch.Tensor]:
    """Whole HF tensors from the ranks' parts (a replica writes the same values twice)."""
    out: dict[str, torch.Tensor] = {}
    for result in results:
        for name, part in result.items():
            full = out.setdefault(name, torch.zeros(part["shape"], dtype=part["tensor"].dtype))
            place(full, part)[...] = part["tensor"]
    return out


def place(full: torch.Tensor, part: dict) -> torch.Tensor:
    """The view of `full` that a rank's part covers."""
    view = full
    if part["rows"]:
        view = view[part["rows"][0] : part["rows"][1]]
    if part["cols"]:
        view = view[:, part["cols"][0] : part["cols"][1]]
    return view


def export_entries(directory, results: list[dict[str, dict]], dtype):
    """(name, shape, dtype, producer) entries that rebuild each whole tensor from the rank files."""
    from pathlib import Path

    from safetensors import safe_open

    files = [Path(directory) / f"rank{rank}.safetensors" for rank in range(len(results))]

    def produce(name):
        full = None
        for rank, result in enumerate(results):
            with safe_open(str(files[rank]), framework="pt", device="cpu") as handle:
                tensor = handle.get_tensor(name)
            if full is None:
                full = torch.zeros(result[name]["shape"], dtype=tensor.dtype)
            place(full, result[name])[...] = tensor
        return full

    return [(name, tuple(part["shape"]), dtype, lambda n=name: produce(n)) for name, part in results[0].items()]
