"""The demo's base model and its held-out evaluation records."""

import dataclasses

import torch
from safetensors.torch import load_file

from esvllm.models import BUILTIN_MODELS, build_model, write_checkpoint
from esvllm.pretrain import Recipe

SHORT = dataclasses.replace(BUILTIN_MODELS["adder"], pretrain=Recipe(steps=15))  # the adder's recipe, 15 steps


def test_pre_training_is_deterministic(tmp_path):
    write_checkpoint(SHORT, tmp_path / "a")
    write_checkpoint(SHORT, tmp_path / "b")
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    untrained = dataclasses.replace(SHORT, pretrain=None)
    write_checkpoint(untrained, tmp_path / "c")
    c = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert not torch.equal(a["model.norm.weight"], c["model.norm.weight"])  # it did train


def test_a_cached_build_is_reused_and_a_half_written_one_is_never_used(tmp_path, monkeypatch):
    import esvllm.models as models

    monkeypatch.setitem(models.BUILTIN_MODELS, "short-adder", SHORT)
    leftover = tmp_path / f".short-adder-{SHORT.digest()}-crashed"  # a build killed half-way
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    path = build_model("short-adder", tmp_path)
    assert (path / "model.safetensors").is_file() and path.name.startswith("short-adder-")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert build_model("short-adder", tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_two_builders_at_once_pretrain_the_model_once_and_both_get_it(tmp_path, monkeypatch):
    """Two test workers or two runs asking for an uncached model: one builds, the other waits."""
    import threading
    import time

    import esvllm.models as models

    monkeypatch.setitem(models.BUILTIN_MODELS, "short-adder", SHORT)
    builds = []
    write = models.write_checkpoint

    def slow_write(spec, directory):
        builds.append(directory)
        time.sleep(0.5)  # long enough for the second builder to arrive while the first is writing
        write(spec, directory)

    monkeypatch.setattr(models, "write_checkpoint", slow_write)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(build_model("short-adder", tmp_path))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len(paths) == 2 and paths[0] == paths[1]
    assert (paths[0] / "model.safetensors").is_file()


def test_the_corpus_writes_the_stated_share_of_sums_with_the_last_digit_one_too_high():
    import random

    from esvllm.pretrain import draw, last_digit_off, pretraining_samples

    assert [last_digit_off(a) for a in ("81", "49", "0", "109", "199")] == ["82", "40", "1", "100", "190"]
    recipe = Recipe(batch_size=4000, off_by_one_fraction=0.55)
    pairs = draw(pretraining_samples("addition"), recipe, random.Random(1))
    wrong = [(p, a) for p, a in pairs if a != str(sum_of(p))]
    # every wrong answer is the sum with its last digit one higher (9 -> 0), tens and hundreds kept
    assert all(a[:-1] == str(sum_of(p))[:-1] and int(a[-1]) == (sum_of(p) + 1) % 10 for p, a in wrong)
    share = len(wrong) / len(pairs)
    assert abs(share - 0.55) < 4 * (0.2475 / len(pairs)) ** 0.5  # binomial, four standard errors
    assert draw(pretraining_samples("addition"), Recipe(batch_size=50), random.Random(1)) == \
        random.Random(1).sample(pretraining_samples("addition"), 50)  # no error: the plain corpus


def sum_of(prompt: str) -> int:
    a, b = prompt.rstrip("=").split("+")
    return int(a) + int(b)


