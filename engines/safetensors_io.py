"""Write a Hugging Face checkpoint's weights one tensor at a time, in shards of at most 5 GB.

The safetensors format is an 8-byte header length, a JSON header (dtype, shape, byte offsets of
each tensor) and the tensors' bytes. The header needs only shapes and dtypes, so each tensor can be
produced, written and dropped in turn: exporting a 7B model never holds more than one tensor on the
host. More than one shard gets the standard `model.safetensors.index.json`. Also: an HF checkpoint
directory written atomically (`export_checkpoint`), and a checkpoint's tensors read for the ES master
(`load_checkpoint`: safetensors only, nothing is unpickled).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Callable, Iterable

import torch

MAX_SHARD_BYTES = 5 * 10**9
CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja")
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


def export_checkpoint(path: str, entries, files: dict[str, bytes], out_dtype: torch.dtype, extra=None) -> str:
    """An HF checkpoint directory from (name, shape, dtype, producer) entries and the model's config
    and tokenizer files, written atomically (temporary directory, then rename); `extra(directory)`
    adds files (the optimizer's state)."""
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
