"""Checkpoint files: atomic, pruned, JSON + safetensors only."""

import json

import pytest

from esvllm import checkpoint


def fake_export(path):
    import os

    os.makedirs(path)
    with open(f"{path}/model.safetensors", "wb") as f:
        f.write(b"weights")


def state(iteration):
    return {"iteration": iteration, "config": {}, "model_path": "/base", "model_iteration": 0}


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    first = checkpoint.save_checkpoint(tmp_path, state(1), fake_export)

    def export_that_dies(path):
        fake_export(path)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        checkpoint.save_checkpoint(tmp_path, state(2), export_that_dies)
    assert checkpoint.latest_checkpoint(tmp_path) == first
    assert checkpoint.load_state(first)["iteration"] == 1
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no debris


def test_old_checkpoints_are_pruned_to_keep(tmp_path):
    for i in range(1, 5):
        checkpoint.save_checkpoint(tmp_path, state(i), fake_export, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter_000003", "iter_000004"]


def test_a_checkpoint_without_weights_points_at_the_last_export(tmp_path):
    checkpoint.save_checkpoint(tmp_path, state(2), fake_export, keep=1)
    later = dict(state(3), model_path="checkpoints/iter_000002/model", model_iteration=2)
    path = checkpoint.save_checkpoint(tmp_path, later, export=None, keep=1)
    loaded = checkpoint.load_state(path)
    assert checkpoint.model_path(tmp_path, loaded) == str(tmp_path / "checkpoints/iter_000002/model")
    assert (tmp_path / "checkpoints/iter_000002/model/model.safetensors").is_file()  # kept: still needed
    assert json.loads((path / "state.json").read_text())["iteration"] == 3
