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


def test_the_corpus_ends_the_stated_share_of_two_digit_sums_with_a_period_and_no_other_sum():
    import random

    from esvllm.pretrain import draw, pretraining_samples

    recipe = Recipe(batch_size=4000, period_fraction=0.6)
    pairs = draw(pretraining_samples("addition"), recipe, random.Random(1))
    two_digit = [a for p, a in pairs if len(a.rstrip(".")) == 2]
    assert all(a.isdigit() for p, a in pairs if len(a.rstrip(".")) != 2)
    share = sum(a.endswith(".") for a in two_digit) / len(two_digit)
    assert abs(share - 0.6) < 4 * (0.24 / len(two_digit)) ** 0.5  # binomial, four standard errors
    assert all(a[:-1] == str(sum_of(p)) for p, a in pairs if a.endswith("."))
    assert draw(pretraining_samples("addition"), Recipe(batch_size=50), random.Random(1)) == \
        random.Random(1).sample(pretraining_samples("addition"), 50)  # no period: the plain corpus


def sum_of(prompt: str) -> int:
    a, b = prompt.rstrip("=").split("+")
    return int(a) + int(b)


