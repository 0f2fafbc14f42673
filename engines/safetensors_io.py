"""Write a Hugging Face checkpoint's weights one tensor at a time, in shards of at most 5 GB.

The safetensors format is an 8-byte header length, a JSON header (dtype, shape, byte offsets of
each tensor) and the tensors' bytes. The header needs only shapes and dtypes, so each tensor can be
produced, written and dropped in turn: exporting a 7B model never holds more than one tensor on the
host. More than one shard gets the standard `model.safetensors.index.json`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable, Iterable

import torch

MAX_SHARD_BYTES = 5 * 10**9
DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64",
               torch.int32: "I32"}

Entry = tuple[str, tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]  # name, shape, dtype, producer


def write_sharded(directory: Path, entries: Iterable[Entry], max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """Write `entries` in order into model.safetensors (or model-0000i-of-0000n.safetensors plus the
    index) under `directory`; each producer is called once, just before its tensor is written."""
    entries = list(entries)
    shards: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        nbytes = _nbytes(entry)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards):
        _write_file(Path(directory) / name, shard)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(_nbytes(e) for e in entries)},
                 "weight_map": {e[0]: name for name, shard in zip(names, shards) for e in shard}}
        (Path(directory) / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return names


def _nbytes(entry: Entry) -> int:
    _, shape, dtype, _ = entry
    return torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()


def _write_file(path: Path, entries: list[Entry]) -> None:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, dtype, _ in entries:
        nbytes = _nbytes((name, shape, dtype, None))
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape, dtype, produce in entries:
            tensor = produce().to(dtype).contiguous().cpu()
            if tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{name}: produced shape {tuple(tensor.shape)}, expected {tuple(shape)}")
            f.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
