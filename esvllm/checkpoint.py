"""Checkpoints: everything needed to continue a run exactly, written atomically.

    <run_dir>/checkpoints/iter_000010/
        state.json     iterations done, config, and which weights the update log starts from
        model/         HF export of the fp32 master after `model_iteration` iterations (optional)

A checkpoint is built in a hidden temporary folder and renamed into place, so a kill during a save
leaves the previous checkpoint intact. Weights are safetensors and state is JSON: nothing is
unpickled. The run's update log (engines.updatelog, RUN/updates.jsonl) rebuilds the weights:
`model_path` + replaying entries [model_iteration, iteration) with `apply_update`.

A checkpoint records only what exists: an exported model is checked complete (config, tokenizer,
every shard its index names, each shard's header readable and its tensors' sizes right) before
state.json, written last, says so. A state-only checkpoint never replaces a complete one of the
same iteration, and a replaced checkpoint is moved aside before the new one takes its name, so a
save never deletes or points into what it replaces. Resume takes the newest checkpoint that passes
the same check; a broken one is named in a warning and skipped, never deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from pathlib import Path

logger = logging.getLogger(__name__)

STATE = "state.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}


def save_checkpoint(run_dir: Path, state: dict, export=None, keep: int = 2) -> Path:
    """Write checkpoint `iter_<state['iteration']>`; `export(path)` writes the weights, if given.

    Without `export` (no live engine, or engines not settled), the checkpoint points at the previous
    weights and carries the update log from there; if a complete checkpoint of this iteration exists
    it is kept as it is (it holds at least as much). Raises OSError (disk full, unwritable, an export
    that is incomplete) with earlier checkpoints untouched.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"iter_{state['iteration']:06d}"
    final = root / name
    if export is None and final.is_dir() and checkpoint_problem(run_dir, final) is None:
        prune(root, keep)
        return final
    staging = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        state = dict(state)
        model = Path(state["model_path"])
        if model.is_absolute() and model.is_relative_to(Path(run_dir).resolve()):
            state["model_path"] = str(model.relative_to(Path(run_dir).resolve()))  # pruning compares these
        if export is not None:
            export(str(staging / "model"))
            problem = model_problem(staging / "model")
            if problem:
                raise OSError(f"the exported model is incomplete: {problem}")
            state.update(model_path=f"checkpoints/{name}/model", model_iteration=state["iteration"])
        elif Path(state["model_path"]).parts[:2] == ("checkpoints", name):
            raise OSError(f"{final}: a state-only checkpoint would point into the checkpoint it replaces")
        _write_json(staging / STATE, state)
        if final.exists():  # moved aside, not deleted, until the new one holds the name
            old = root / f".{name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    prune(root, keep)
    return final


def model_problem(model_dir: Path) -> str | None:
    """What makes an exported HF model directory unusable, or None when it is complete."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        return f"{model_dir}: config.json missing"
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        return f"{model_dir}: no tokenizer file ({', '.join(TOKENIZER_FILES)})"
    index = model_dir / "model.safetensors.index.json"
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
            else ["model.safetensors"]
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        return f"{index}: unreadable ({exc})"
    for shard in shards:
        problem = safetensors_problem(model_dir / shard)
        if problem:
            return problem
    return None


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's header and sizes (without reading its tensors), or None."""
    if not path.is_file():
        return f"{path}: missing"
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                return f"{path}: truncated ({size} bytes, the header alone says {length + 8})"
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as exc:
        return f"{path}: unreadable header ({exc})"
    end = 0
    for tensor, meta in header.items():
        if tensor == "__metadata__":
            continue
        start, stop = meta["data_offsets"]
        count = 1
        for n in meta["shape"]:
            count *= n
        if stop - start != count * DTYPE_BYTES.get(meta["dtype"], 0):
            return f"{path}: tensor {tensor} has {stop - start} bytes for shape {meta['shape']} {meta['dtype']}"
        end = max(end, stop)
    if 8 + length + end != size:
        return f"{path}: {size} bytes, its header describes {8 + length + end} (truncated or cut short)"
    return None


def checkpoint_problem(run_dir: Path, checkpoint: Path) -> str | None:
    """What makes a checkpoint unusable for resume (its state, or the weights it points at), or None."""
    try:
        state = load_state(checkpoint)
        int(state["iteration"]), int(state["model_iteration"]), state["model_path"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{checkpoint / STATE}: unreadable ({exc!r})"
    model = Path(model_path(run_dir, state))
    if model.is_dir() or model.resolve().is_relative_to(Path(run_dir).resolve()):
        return model_problem(model)
    return None  # a base model by another name (resolved when the run starts)


def usable_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that passes checkpoint_problem; each broken newer one is named in a
    warning with what is wrong, and left where it is."""
    root = Path(run_dir) / "checkpoints"
    found = sorted(p for p in root.glob("iter_*") if p.is_dir()) if root.is_dir() else []
    for candidate in reversed(found):
        problem = checkpoint_problem(run_dir, candidate)
        if problem is None:
            return candidate
        logger.warning("checkpoint %s is skipped (left in place): %s", candidate, problem)
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    done = sorted(p for p in root.glob("iter_*") if (p / STATE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def load_state(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / STATE).read_text())


def model_path(run_dir: Path, state: dict) -> str:
    """Absolute path of the weights a checkpoint's update log starts from."""
    path = Path(state["model_path"])
    return str(path if path.is_absolute() else Path(run_dir) / path)


def prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints, and any whose weights a newer one still points at."""
    if keep <= 0:
        return
    done = sorted(p for p in root.glob("iter_*") if (p / STATE).is_file())
    needed = {load_state(p).get("model_path") for p in done[-keep:]}
    for old in done[:-keep]:
        if f"checkpoints/{old.name}/model" not in needed:
            shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
