"""Countdown (paper section 4.1): combine the given numbers with + - * / to reach the target.

The reward is the paper's (`countdown/countdown_task.py` of its code), score for score:
  reward = 0.1 * format + answer
- format, on "<think>" + completion (the prompt ends with "<think>"): 1.0 when the whole text is
  `<think>...</think>\\n<answer>...</answer>` (exactly one newline between the blocks, nothing after
  but an optional newline); otherwise 0.1 if a <think>...</think> block is present plus 0.5 if an
  <answer>...</answer> block is present;
- answer: 1.0 when the LAST <answer>...</answer> block of the completion is non-empty, made only of
  digits, + - * / ( ) and spaces, uses the given numbers exactly (as a multiset), and evaluates within
  1e-5 of the target.
The paper runs regular expressions and eval(); here the same decisions are made by linear scans and
an AST evaluator with Python's arithmetic (rewards.arith), so no completion can hang the scorer and
any 64 KB completion is scored in milliseconds.
"""

from __future__ import annotations

import random
import re

from rewards.arith import UnsafeExpression, evaluate, parse_expression

TOLERANCE = 1e-5
ALLOWED = re.compile(r"[0-9+\-*/() ]+\n?")  # the paper's ^[0-9+\-*/() ]+$ ($ admits one final newline)
DIGITS = re.compile(r"\d+")

# The paper's prompt (every `context` of its countdown.json), character for character: no space
# after "answer." or "</answer>.", numbers as numpy prints an array.
PROMPT = (
    "You are a helpful assistant. You first think about the reasoning process in your mind and then provide the "
    "user with the answer.Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
    "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> "
    "tags. And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.Let "
    "me solve this step by step.\n<think>"
)


def countdown_reward(completion: str, sample: dict) -> dict:
    fmt = format_score("<think>" + completion)
    answer = answer_score(completion, sample["numbers"], sample["target"])
    return {"reward": 0.1 * fmt + answer, "format": fmt, "answer": answer}


def format_score(text: str) -> float:
    """The paper's format_reward_function, by scans instead of regular expressions."""
    end = len(text) - 1 if text.endswith("\n") else len(text)
    if text.startswith("<think>") and text[:end].endswith("</answer>"):
        middle = text.find("</think>\n<answer>", len("<think>"))
        if middle != -1 and middle + len("</think>\n<answer>") <= end - len("</answer>"):
            return 1.0
    score = 0.0
    opening = text.find("<think>")
    if opening != -1 and text.find("</think>", opening + len("<think>")) != -1:
        score += 0.1
    opening = text.find("<answer>")
    if opening != -1 and text.find("</answer>", opening + len("<answer>")) != -1:
        score += 0.5
    return score


def last_answer(completion: str) -> str | None:
    """What re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)[-1] returns, in one pass."""
    found, position = None, 0
    while True:
        opening = completion.find("<answer>", position)
        if opening == -1:
            return found
        closing = completion.find("</answer>", opening + len("<answer>"))
        if closing == -1:
            return found
        found, position = completion[opening + len("<answer>") : closing], closing + len("</answer>")


def answer_score(completion: str, numbers: list[int], target) -> float:
    content = last_answer(completion)
    if not content or not ALLOWED.fullmatch(content):
        return 0.0
    used = DIGITS.findall(content)
    if len(used) != len(numbers) or any(len(n) > 30 for n in used):  # (the paper's int() raises past 4300 digits)
        return 0.0
    if sorted(int(n) for n in used) != sorted(int(n) for n in numbers):
        return 0.0
    try:
        value = evaluate(parse_expression(content))
        return 1.0 if abs(float(value) - float(target)) < TOLERANCE else 0.0
    except (UnsafeExpression, ArithmeticError, TypeError, ValueError):
        return 0.0


def format_numbers(numbers: list[int]) -> str:
    """As numpy prints an integer array: right-aligned to the widest, one space apart ([83 78  1 39])."""
    width = max(len(str(n)) for n in numbers)
    return "[" + " ".join(str(n).rjust(width) for n in numbers) + "]"


def generate_problems(count: int, seed: int) -> list[dict]:
    """`count` distinct solvable problems like the paper's: 3-4 numbers in 1..99, integer target."""
    rng = random.Random(seed)
    problems, seen = [], set()
    while len(problems) < count:
        numbers = [rng.randint(1, 99) for _ in range(rng.choice((3, 4)))]
        expression = _random_expression(rng, numbers)
        try:
            value = evaluate(parse_expression(expression))
        except (ArithmeticError, UnsafeExpression):
            continue
        if float(value) != int(value) or not 1 <= value <= 999:
            continue
        key = (tuple(sorted(numbers)), int(value))
        if key in seen:
            continue
        seen.add(key)
        problems.append(make_sample(numbers, int(value), solution=expression))
    return problems


def make_sample(numbers: list[int], target, solution: str | None = None) -> dict:
    sample = {"prompt": PROMPT.format(numbers=format_numbers(numbers), target=target), "numbers": list(numbers),
              "target": target}
    if solution:
        sample["solution"] = solution
    return sample


def _random_expression(rng: random.Random, numbers: list[int]) -> str:
    parts = [str(n) for n in rng.sample(numbers, len(numbers))]
    while len(parts) > 1:
        i = rng.randrange(len(parts) - 1)
        parts[i : i + 2] = [f"({parts[i]} {rng.choice('+-*/')} {parts[i + 1]})"]
    return parts[0][1:-1] if parts[0].startswith("(") else parts[0]
