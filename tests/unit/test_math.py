"""The math task's grader (math-verify under the paper's library's settings) on hand-written answers."""

import pytest

from rewards.math import last_boxed, math_reward, qwen_math_prompt


@pytest.mark.parametrize("given, reference", [
    ("\\frac{1}{2}", "\\frac12"), ("0.5", "\\frac{1}{2}"), ("\\dfrac{3}{4}", "0.75"), ("2", "2.0"),
    ("\\{1, 2\\}", "\\{2, 1\\}"), ("[0, 1)", "[0,1)"), ("\\text{yes}", "yes"), ("x^2+2x+1", "(x+1)^2"),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"), ("10\\%", "10\\%"), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
])
def test_equal_answers_score_one(given, reference):
    assert math_reward(f"Reasoning... so \\boxed{{{given}}}.", {"answer": reference})["reward"] == 1.0


@pytest.mark.parametrize("given, reference", [
    ("\\frac{1}{3}", "\\frac{1}{2}"), ("0.51", "0.5"), ("\\{1, 3\\}", "\\{1, 2\\}"), ("[0, 1]", "[0, 1)"),
    ("\\text{no}", "yes"), ("x^2+1", "(x+1)^2"), ("3", "-3"),
])
def test_unequal_answers_score_zero(given, reference):
    assert math_reward(f"\\boxed{{{given}}}", {"answer": reference})["reward"] == 0.0


@pytest.mark.parametrize("completion", ["\\boxed{\\frac{1}{", "\\boxed{\\frac{{{}}}}}", "\\boxed{\\sqrt[}{2}", "\\boxed{}",
                                        "no box at all: 1/2", "\\boxed{" + "(" * 5000 + "}", "\\boxed{\\left(\\right.}"])
def test_malformed_latex_scores_zero_without_raising(completion):
    assert math_reward(completion, {"answer": "\\frac{1}{2}"})["reward"] == 0.0


def test_the_last_box_counts_and_list_and_number_references_work():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{a}{b}} end") == "\\frac{a}{b}"
    assert math_reward("\\boxed{1} then \\boxed{2}", {"answer": "2"})["reward"] == 1.0
    assert math_reward("\\boxed{9.6}", {"answer": ["9.6\n", "9.60"]})["reward"] == 1.0  # minerva's lists
    assert math_reward("\\boxed{142}", {"answer": 142.0})["reward"] == 1.0  # amc's floats


def test_the_prompt_is_the_papers_qwen_math_format():
    assert qwen_math_prompt("What is 1+1?") == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n")
