"""Countdown: combine the given numbers with + - * / to reach the target (paper section 4.1).

reward = 0.1 * format + answer, as the paper (after TinyZero) defines them:
- format 1.0 when the completion is `...</think> <answer>...</answer>` (the prompt opens <think>);
- answer 1.0 when the last <answer> is an expression that uses each given number exactly once and
  evaluates within 1e-5 of the target. Checked by `rewards.arith`, never eval().
"""

from __future__ import annotations

import random
import re

from rewards.arith import UnsafeExpression, evaluate, literals, parse_expression

FORMAT = re.compile(r"^\s*(?:<think>)?.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
TOLERANCE = 1e-5

PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves "
    "it. The assistant first thinks about the reasoning process in the mind and then provides the "
    "user with the answer.\nUser: Using the numbers {numbers}, create an equation that equals "
    "{target}. You can use basic arithmetic operations (+, -, *, /) and each number can only be used "
    "once. Show your work in <think> </think> tags. And return the final answer in <answer> "
    "</answer> tags, for example <answer> (1 + 2) / 3 </answer>.\nAssistant: Let me solve this step "
    "by step.\n<think>"
)


def countdown_reward(completion: str, sample: dict) -> dict:
    fmt = 1.0 if FORMAT.match(completion) else 0.0
    answer = answer_correct(completion, sample["numbers"], sample["target"])
    return {"reward": 0.1 * fmt + answer, "format": fmt, "answer": answer}


def answer_correct(completion: str, numbers: list[int], target: float) -> float:
    matches = ANSWER.findall(completion)
    if not matches:
        return 0.0
    try:
        tree = parse_expression(matches[-1])
    except UnsafeExpression:
        return 0.0
    if sorted(literals(tree)) != sorted(int(n) for n in numbers):
        return 0.0  # each given number exactly once, no others
    try:
        value = evaluate(tree)
    except ZeroDivisionError:
        return 0.0
    return 1.0 if abs(float(value) - float(target)) < TOLERANCE else 0.0


def generate_problems(count: int, seed: int) -> list[dict]:
    """`count` distinct solvable problems: 3-4 numbers in 1..99, target from a random expression."""
    rng = random.Random(seed)
    problems, seen = [], set()
    while len(problems) < count:
        numbers = [rng.randint(1, 99) for _ in range(rng.choice((3, 4)))]
        expression = _random_expression(rng, numbers)
        try:
            value = evaluate(parse_expression(expression))
        except ZeroDivisionError:
            continue
        if value.denominator != 1 or not 1 <= value <= 999:
            continue
        key = (tuple(sorted(numbers)), int(value))
        if key in seen:
            continue
        seen.add(key)
        problems.append(make_sample(numbers, int(value), solution=expression))
    return problems


def make_sample(numbers: list[int], target: int, solution: str | None = None) -> dict:
    sample = {"prompt": PROMPT.format(numbers=list(numbers), target=target), "numbers": list(numbers),
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
