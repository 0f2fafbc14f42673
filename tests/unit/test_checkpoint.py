"""Checkpoint files: atomic, pruned, JSON + safetensors only."""

import json
import logging
import os

import pytest
import torch

from esvllm import checkpoint


def fake_export(path):
    """A complete, tiny HF model directory: config, tokenizer, one safetensors shard."""
    import os

    from safetensors.torch import save_file

    os.makedirs(path)
    save_file({"w": torch.arange(6, dtype=torch.float32).view(2, 3)}, f"{path}/model.safetensors")
    for name in ("config.json", "tokenizer.json"):
        with open(f"{path}/{name}", "w") as f:
            f.write("{}")


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


def truncate(path, keep_bytes: int):
    with open(path, "r+b") as f:
        f.truncate(keep_bytes)


def test_a_state_only_save_of_an_iteration_already_saved_keeps_its_weights(tmp_path):
    # An interrupt during the update after the periodic checkpoint: the same iteration again, engines
    # not settled, the state pointing at that checkpoint's own model.
    first = checkpoint.save_checkpoint(tmp_path, state(5), fake_export)
    again = dict(state(5), model_path=str((first / "model").resolve()), model_iteration=5)
    path = checkpoint.save_checkpoint(tmp_path, again, export=None)
    assert path == first and (first / "model" / "model.safetensors").is_file()
    assert checkpoint.checkpoint_problem(tmp_path, path) is None
    assert checkpoint.usable_checkpoint(tmp_path) == first


def test_a_save_that_replaces_a_checkpoint_moves_it_aside_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    first = checkpoint.save_checkpoint(tmp_path, state(5), fake_export)
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (renames.append((str(a), str(b))), real_rename(a, b)))
    checkpoint.save_checkpoint(tmp_path, state(5), fake_export)
    assert renames[0] == (str(first), str(first.parent / f".{first.name}.old-{os.getpid()}"))
    assert renames[1][1] == str(first)
    assert checkpoint.checkpoint_problem(tmp_path, first) is None


def test_an_incomplete_export_is_never_recorded(tmp_path):
    first = checkpoint.save_checkpoint(tmp_path, state(1), fake_export)

    def export_cut_short(path):
        fake_export(path)
        truncate(f"{path}/model.safetensors", 40)

    with pytest.raises(OSError, match="incomplete.*model.safetensors"):
        checkpoint.save_checkpoint(tmp_path, state(2), export_cut_short)
    assert checkpoint.usable_checkpoint(tmp_path) == first
    assert not (tmp_path / "checkpoints" / "iter_000002").exists()


@pytest.mark.parametrize("damage", ["truncated_shard", "no_model", "no_config", "no_tokenizer", "index_names_a_missing_shard",
                                    "bad_state"])
def test_resume_skips_a_broken_checkpoint_with_a_warning_and_leaves_it(tmp_path, damage, caplog):
    good = checkpoint.save_checkpoint(tmp_path, state(1), fake_export, keep=5)
    broken = checkpoint.save_checkpoint(tmp_path, state(2), fake_export, keep=5)
    model = broken / "model"
    if damage == "truncated_shard":
        truncate(model / "model.safetensors", (model / "model.safetensors").stat().st_size - 4)
    elif damage == "no_model":
        for f in model.iterdir():
            f.unlink()
        model.rmdir()
    elif damage == "no_config":
        (model / "config.json").unlink()
    elif damage == "no_tokenizer":
        (model / "tokenizer.json").unlink()
    elif damage == "index_names_a_missing_shard":
        (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-00002.safetensors"}}))
    else:
        (broken / "state.json").write_text("{")
    with caplog.at_level(logging.WARNING, logger="esvllm.checkpoint"):
        assert checkpoint.usable_checkpoint(tmp_path) == good
    [warning] = [r.getMessage() for r in caplog.records]
    assert str(broken) in warning and "skipped" in warning
    assert broken.is_dir()  # never deleted


def test_a_tensor_whose_bytes_do_not_match_its_shape_is_found(tmp_path):
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(20))
    assert "has 20 bytes for shape [2, 3]" in checkpoint.safetensors_problem(path)
