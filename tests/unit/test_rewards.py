"""Rewards on tables of cases; the Countdown evaluator never runs eval() and never hangs."""

import json

import pytest

from rewards import REWARDS, resolve_reward
from rewards.conciseness import conciseness_reward
from rewards.countdown import countdown_reward, generate_problems
from rewards.data import load_samples, task_splits

SAMPLE = {"numbers": [44, 19, 35], "target": 98}


def wrap(answer, think="I try.</think>\n"):
    return f"{think}<answer>{answer}</answer>"


@pytest.mark.parametrize(
    "completion, expected",
    [
        (wrap("44 + 19 + 35"), 1.1),  # correct answer, the paper's exact format
        ("44 + 19 + 35 = 98", 0.0),  # no tags at all
        (wrap("44 + 19 - 35"), 0.1),  # format only: wrong value
        (wrap("44 + 19 + 36"), 0.1),  # wrong numbers
        (wrap("44 + 44 + 19 + 35 - 44"), 0.1),  # a number reused
        (wrap("44 + 19"), 0.1),  # a number left out
        (wrap("44 * 19 / (35 - 35)"), 0.1),  # division by zero
        (wrap("44**19**35"), 0.1),  # a power tower is refused, not computed
        (wrap("４４ + 19 + 35"), 0.1),  # non-ASCII digits
        (wrap("__import__('os').system('true')"), 0.1),  # code
        ("", 0.0),  # empty output
        ("<answer>44 + 19 + 35</answer>", 1.05),  # right answer, no think block: format 0.5
        ("I try</think><answer>71 + 90 - 8 = 153</answer>", 0.06),  # no newline between the blocks: 0.1 + 0.5
        ("I try</think>\n<answer>44 + 19 + 35</answer>\n", 1.1),  # one trailing newline is allowed ...
        ("I try</think>\n<answer>44 + 19 + 35</answer>\n\n", 1.06),  # ... two are not
        ("I try</think>  <answer>44 + 19 + 35</answer>", 1.06),  # spaces instead of the newline
        ("I try</think>\n<answer>1</answer><answer>44 + 19 + 35</answer>", 1.1),  # the last answer counts
        ("I try</think>\n<answer>44 + 19 + 35</answer> done", 1.06),  # text after the answer
        (wrap(" 44 + 19 + 35 "), 1.1),  # spaces inside the answer are fine
        (wrap("44+19+35\n"), 1.1),  # so is one newline at its end (the paper's $)
        (wrap("(44 // 19) * 35 + 28"), 0.1),  # floor division is arithmetic too (but numbers are wrong)
    ],
)
def test_countdown_reward_table(completion, expected):
    assert countdown_reward(completion, SAMPLE)["reward"] == pytest.approx(expected)


def test_a_result_within_1e_5_of_the_target_counts_and_a_string_target_works():
    sample = {"numbers": [1, 3, 33], "target": "11.000001"}
    assert countdown_reward(wrap("33 / 3 * 1"), sample)["answer"] == 1.0
    assert countdown_reward(wrap("33 / 3 * 1"), {"numbers": [1, 3, 33], "target": "-11"})["answer"] == 0.0


def test_the_prompt_is_the_papers_character_for_character():
    from rewards.countdown import make_sample

    sample = make_sample([83, 78, 1, 39], 82)
    assert sample["prompt"] == (
        "You are a helpful assistant. You first think about the reasoning process in your mind and then provide "
        "the user with the answer.Using the numbers [83 78  1 39], create an equation that equals 82. You can "
        "use basic arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in "
        "<think> </think> tags. And return the final answer in <answer> </answer> tags, for example <answer> "
        "(1 + 2) / 3 </answer>.Let me solve this step by step.\n<think>")
    for problem in generate_problems(300, seed=1):
        assert 3 <= len(problem["numbers"]) <= 4 and all(1 <= n <= 99 for n in problem["numbers"])


def test_generated_problems_are_solvable_by_their_own_solution():
    for problem in generate_problems(50, seed=3):
        assert countdown_reward(wrap(problem["solution"]), problem)["reward"] == pytest.approx(1.1)
        assert problem["prompt"].endswith("\n<think>")


def test_conciseness_is_minus_the_length_difference():
    assert conciseness_reward("Paris", {"target": "Paris"}) == 0
    assert conciseness_reward("The capital is Paris", {"target": "Paris"}) == -15


def test_an_all_whitespace_completion_is_not_rewarded_as_an_empty_one():
    # The paper measures the generated text as it is: 32 spaces are 32 characters, not 0.
    assert conciseness_reward(" " * 32, {"target": "abcdef"}) == -26
    assert conciseness_reward("", {"target": "abcdef"}) == -6


@pytest.mark.parametrize("completion, answer, fmt, right_sum", [
    ("81", 1.0, 1.0, 1.0), ("81 ", 0.0, 0.0, 1.0), (" 81", 0.0, 0.0, 0.0), ("80", 0.0, 1.0, 0.0),
    ("081", 0.0, 0.0, 0.0), ("8181", 0.0, 1.0, 0.0), ("", 0.0, 0.0, 0.0), ("81\n", 0.0, 0.0, 1.0),
    ("eighty-one", 0.0, 0.0, 0.0), ("81.", 0.0, 0.0, 1.0), ("810.", 0.0, 0.0, 0.0), ("8.1", 0.0, 0.0, 0.0)])
def test_addition_is_exact_match_on_the_generated_text_and_sum_reads_the_leading_number(
        completion, answer, fmt, right_sum):
    from rewards.addition import addition_reward

    out = addition_reward(completion, {"target": 81})
    assert (out["answer"], out["format"], out["sum"]) == (answer, fmt, right_sum)
    assert out["reward"] == pytest.approx(0.1 * fmt + answer)  # `sum` is a record, not rewarded


def test_addition_pools_never_share_a_problem_and_the_held_out_split_is_the_held_out_pool():
    from rewards.addition import problems

    pools = {name: set(problems(name)) for name in ("pretrain", "train", "heldout")}
    assert sum(len(p) for p in pools.values()) == 100 * 100
    assert not (pools["pretrain"] & pools["train"] or pools["pretrain"] & pools["heldout"] or pools["train"] & pools["heldout"])
    train, test = task_splits("addition", None, 3000, 256, seed=5)
    assert {tuple(s["numbers"]) for s in train} <= pools["train"]
    assert {tuple(s["numbers"]) for s in test} <= pools["heldout"]
    assert test == task_splits("addition", None, 10, 256, seed=6)[1]  # the same held-out set for every run


# For every registered reward: a sample, a completion it must score best, and one it must score lower.
BEST_AND_WORSE = {
    "addition": ({"target": 81}, "81", "80", 1.1),
    "math": ({"answer": "\\frac{1}{2}"}, "so the answer is \\boxed{0.5}", "\\boxed{2}", 1.0),
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
