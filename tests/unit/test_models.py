"""Model names: built-in, local directories, and Hugging Face Hub names resolved from the Hub's cache."""

import os
import shutil
import subprocess
import sys

import pytest

from esvllm.models import resolve_model


def test_a_hub_name_resolves_offline_from_a_filled_cache(tmp_path, tiny_model):
    # The cache layout huggingface_hub writes: refs/main names the snapshot holding the files.
    repo = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    code = "from esvllm.models import resolve_model; print(resolve_model('Qwen/Qwen2.5-0.5B-Instruct'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(repo / "snapshots" / commit)
    missing = "from esvllm.models import resolve_model; resolve_model('Qwen/Qwen2.5-7B-Instruct')"
    out = subprocess.run([sys.executable, "-c", missing], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0 and "not in the Hugging Face cache" in out.stderr


def test_a_local_directory_and_a_missing_path_are_told_apart(tmp_path, tiny_model):
    assert resolve_model(tiny_model) == tiny_model
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        resolve_model(str(tmp_path / "no-such-model"))
