"""The demo's model on real vLLM engines: where the adder starts, and a demo run's evaluation records."""

import json

import pytest


def test_the_adder_starts_between_5_and_50_percent_and_its_format_holds_it_back(ray_session):
    from engines.fleet import Fleet
    from esvllm.eval import Evaluator
    from esvllm.models import resolve_model
    from esvllm.scoring import Scorer
    from engines.updatelog import UpdateLog
    from rewards.data import task_splits

    from tests.conftest import start_pool

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
