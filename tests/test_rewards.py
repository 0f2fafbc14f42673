"""Rewards on tables of cases; the Countdown evaluator never runs eval() and never hangs."""

import json
import time

import pytest

from rewards import REWARDS, resolve_reward
from rewards.conciseness import conciseness_reward
from rewards.countdown import countdown_reward, generate_problems
from rewards.data import load_samples, task_splits

SAMPLE = {"numbers": [44, 19, 35], "target": 98}


def wrap(answer, think="I try.</think> "):
    return f"{think}<answer>{answer}</answer>"


@pytest.mark.parametrize(
    "completion, expected",
    [
        (wrap("44 + 19 + 35"), 1.1),  # correct answer, right format
        ("44 + 19 + 35 = 98", 0.0),  # no tags at all
        (wrap("44 + 19 - 35"), 0.1),  # format only: wrong value
        (wrap("44 + 19 + 36"), 0.1),  # wrong numbers
        (wrap("44 + 44 + 19 + 35 - 44"), 0.1),  # a number reused
        (wrap("44 + 19"), 0.1),  # a number left out
        (wrap("44 / (19 - 19) + 35"), 0.1),  # reused number and division by zero
        (wrap("44 * 19 / (35 - 35)"), 0.1),  # division by zero
        (wrap("44**19**35"), 0.1),  # a power tower is rejected, not computed
        (wrap("9" * 5000), 0.1),  # a huge literal is rejected
        (wrap("４４ + 19 + 35"), 0.1),  # non-ASCII digits
        (wrap("__import__('os').system('true')"), 0.1),  # code
        ("", 0.0),  # empty output
        ("<answer>44 + 19 + 35</answer>", 1.0),  # right answer, no </think>: no format bonus
    ],
)
def test_countdown_reward_table(completion, expected):
    assert countdown_reward(completion, SAMPLE)["reward"] == pytest.approx(expected)


def test_a_result_within_1e_5_of_the_target_counts():
    sample = {"numbers": [1, 3, 33], "target": 11.000001}
    assert countdown_reward(wrap("33 / 3 * 1"), sample)["answer"] == 1.0


def test_a_power_tower_is_scored_in_under_10ms():
    started = time.perf_counter()
    countdown_reward(wrap("44**19**35"), SAMPLE)
    assert time.perf_counter() - started < 0.01


def test_generated_problems_are_solvable_by_their_own_solution():
    for problem in generate_problems(50, seed=3):
        assert countdown_reward(wrap(problem["solution"]), problem)["reward"] == pytest.approx(1.1)


def test_conciseness_is_minus_the_length_difference():
    assert conciseness_reward("Paris", {"target": "Paris"}) == 0
    assert conciseness_reward("The capital is Paris", {"target": "Paris"}) == -15


# For every registered reward: a sample, a completion it must score best, and one it must score lower.
BEST_AND_WORSE = {
    "countdown": (SAMPLE, wrap("44 + 19 + 35"), wrap("44 + 19 - 35"), 1.1),
    "conciseness": ({"target": "Paris"}, "Paris", "The capital is Paris", 0.0),
}


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_registered_reward_scores_its_best_answer_highest(name):
    assert set(BEST_AND_WORSE) == set(REWARDS), "a registered reward has no case here"
    sample, best, worse, best_value = BEST_AND_WORSE[name]
    value = lambda c: (lambda out: out["reward"] if isinstance(out, dict) else out)(REWARDS[name](c, sample))
    assert value(best) == pytest.approx(best_value)
    assert value(worse) < value(best) and value("") < value(best)


def test_reward_specs_resolve_by_name_and_module_function():
    assert resolve_reward("countdown") is countdown_reward
    assert resolve_reward("rewards.conciseness:conciseness_reward") is conciseness_reward
    with pytest.raises(ValueError, match="nope"):
        resolve_reward("nope")
    with pytest.raises(ValueError, match="no function 'missing'"):
        resolve_reward("rewards.conciseness:missing")


def test_train_and_test_splits_never_overlap():
    train, test = task_splits("countdown", None, 200, 100, seed=0)
    assert len(train) == 200 and len(test) == 100
    assert not {s["prompt"] for s in train} & {s["prompt"] for s in test}


def test_loaders_read_the_papers_json_and_jsonl(tmp_path):
    rows = [{"context": f"prompt {i}", "numbers": [1, 2, 3], "target": 6} for i in range(5)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    for name in ("d.json", "d.jsonl"):
        samples = load_samples(str(tmp_path / name))
        assert [s["prompt"] for s in samples] == [r["context"] for r in rows]
        assert samples[0]["numbers"] == [1, 2, 3]


def test_loader_reads_a_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"context": ["a", "b"], "numbers": [[1, 2], [3, 4]], "target": [3, 7]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    samples = load_samples(str(tmp_path / "ds"))
    assert [s["prompt"] for s in samples] == ["a", "b"] and samples[1]["target"] == 7


def test_a_missing_data_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        load_samples(str(tmp_path / "nothere.json"))
