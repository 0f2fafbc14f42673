"""Whole runs on fake engines with user data: separate evaluation sets, rewards that return NaN."""

import json

import pytest

from esvllm.eval import read_eval_log
from esvllm.runlog import read_metrics
from tests.helpers import FAKE, run
from tests.unit.test_data import papers_rows


def test_a_training_file_and_separate_evaluation_sets_each_get_their_own_metrics(tmp_path, ray_session):
    (tmp_path / "train.json").write_text(json.dumps(papers_rows(6)))
    (tmp_path / "a.json").write_text(json.dumps(papers_rows(4, start=100)))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in papers_rows(3, start=200)))
    args = ["--task", "countdown", "--data", str(tmp_path / "train.json"), "--data_sample", "6",
            "--eval_data", f"first={tmp_path / 'a.json'}", f"second={tmp_path / 'b.jsonl'}", "--eval_every", "3",
            "--max_model_len", "512"]
    run_dir = run(tmp_path, "run", args, base=FAKE)  # later flags win: --task countdown
    evals = read_eval_log(run_dir)
    assert {(e["iteration"], e["set"], e["samples"]) for e in evals} == {
        (0, "first", 4), (0, "second", 3), (3, "first", 4), (3, "second", 3)}
    assert set(read_metrics(run_dir)[-1]["eval"]) == {"first", "second"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert {"eval/first/accuracy", "eval/second/format_rate"} <= set(events.Tags()["scalars"])


def test_a_reward_that_returns_nan_for_some_completions_is_scored_with_the_fallback(tmp_path, ray_session):
    run_dir = run(tmp_path, "run", ["--reward", "tests.reward_helpers:nan_for_long_completions",
                                    "--reward_fallback", "-20"], base=FAKE)
    records = read_metrics(run_dir)
    assert len(records) == 3 and sum(r["reward_errors"] for r in records) > 0
    assert all(r["reward_min"] >= -20 for r in records)


@pytest.mark.parametrize("reward", ["always_nan", "always_inf"])
def test_a_reward_that_is_never_finite_stops_the_run_with_a_checkpoint(tmp_path, ray_session, reward):
    from esvllm.checkpoint import latest_checkpoint
    with pytest.raises(SystemExit, match="error: .*checkpoint saved"):
        run(tmp_path, "run", ["--reward", f"tests.reward_helpers:{reward}"], base=FAKE)
    [run_dir] = list((tmp_path / "run").iterdir())
    assert latest_checkpoint(run_dir) is not None
