"""The demo's model on real vLLM engines: where the adder starts (a run's evaluation records:
tests/engine/test_examples.py)."""


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
