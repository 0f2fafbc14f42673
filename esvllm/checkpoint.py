"""Checkpoints: everything needed to continue a run exactly, written atomically.

    <run_dir>/checkpoints/iter_000010/
        state.json     iterations done, config, and which weights the update log starts from
        model/         HF export of the fp32 master after `model_iteration` iterations (optional)

A checkpoint is built in a hidden temporary folder and renamed into place, so a kill during a save
leaves the previous checkpoint intact. Weights are safetensors and state is JSON: nothing is
unpickled. The run's update log (esvllm.updatelog, RUN/updates.jsonl) rebuilds the weights:
`model_path` + replaying entries [model_iteration, iteration) with `apply_update`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

STATE = "state.json"


def save_checkpoint(run_dir: Path, state: dict, export=None, keep: int = 2) -> Path:
    """Write checkpoint `iter_<state['iteration']>`; `export(path)` writes the weights, if given.

    Without `export` (no live engine), the checkpoint points at the previous weights and carries the
    update log from there. Raises OSError (disk full, unwritable) with earlier checkpoints untouched.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"iter_{state['iteration']:06d}"
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
            state.update(model_path=f"checkpoints/{name}/model", model_iteration=state["iteration"])
        _write_json(staging / STATE, state)
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    prune(root, keep)
    return final


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
