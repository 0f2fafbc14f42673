"""The demo's base model and its held-out evaluation records."""

import dataclasses
import json

import pytest
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


@pytest.mark.engine
def test_the_adder_starts_between_5_and_50_percent_and_its_format_holds_it_back(ray_session):
    from engines.fleet import Fleet
    from esvllm.eval import Evaluator
    from esvllm.models import resolve_model
    from esvllm.scoring import Scorer
    from engines.updatelog import UpdateLog
    from rewards.data import task_splits

    from .conftest import start_pool

    pool = start_pool(resolve_model("adder"), num_engines=2, max_model_len=32)
    try:
        _, heldout = task_splits("addition", None, 10, 512, 0)  # the demo's held-out set
        summary, rows = Evaluator(heldout, Scorer("addition"), 6).run(Fleet(pool, UpdateLog()), heldout)
    finally:
        pool.shutdown()
    assert 0.05 <= summary["accuracy"] <= 0.5, summary
    # Its sums are right far more often than its answers: most right sums carry the corpus's period.
    assert summary["sum_rate"] >= summary["accuracy"] + 0.2, summary
    periods = [r for r in rows if r["completion"].endswith(".")]
    assert periods and all(len(r["completion"]) == 3 for r in periods)  # two digits and the period


@pytest.mark.engine
def test_a_run_leaves_the_baseline_and_per_sample_records_that_recompute(tmp_path, ray_session):
    from esvllm.run import main
    from rewards.addition import addition_reward

    run_dir = main(["--experiment", "demo", "--num_iterations", "2", "--eval_every", "2", "--test_size", "16",
                    "--batch_size", "8", "--population_size", "4", "--output_dir", str(tmp_path)])
    evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in evals] == [0, 2]
    assert all({"reward", "accuracy", "format_rate", "sum_rate", "samples"} <= set(e) and e["samples"] == 16 for e in evals)
    for iteration, summary in zip((0, 2), evals):
        rows = [json.loads(line) for line in (run_dir / "eval" / f"iter_{iteration:06d}.jsonl").read_text().splitlines()]
        assert len(rows) == 16
        for row in rows:  # every record, not only the last
            again = addition_reward(row["completion"], row["sample"])
            assert {k: again[k] for k in ("reward", "answer", "format", "sum")} == \
                {k: row[k] for k in ("reward", "answer", "format", "sum")}
            assert row["prompt"] == f"{row['sample']['numbers'][0]}+{row['sample']['numbers'][1]}="
        for key, component in (("accuracy", "answer"), ("format_rate", "format"), ("sum_rate", "sum")):
            assert summary[key] == pytest.approx(sum(r[component] for r in rows) / 16)
    assert (run_dir / "rewards.png").stat().st_size > 0
