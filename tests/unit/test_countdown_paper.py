"""The Countdown reward equals the paper's, score for score, on thousands of generated completions.

`paper_reward` below is the paper's own function (countdown/countdown_task.py of its code),
restated here as the reference: regular expressions and eval(). eval() runs only on the test's own
generated strings, never on model output; the generator keeps powers small enough to compute.
"""

import random
import re

import pytest

from benchmarks.rewards import ADVERSARIAL, time_reward
from rewards import REWARDS
from rewards.countdown import countdown_reward


def paper_format(response):
    think_match = re.search(r"<think>.*?<\/think>", response, re.DOTALL)
    answer_match = re.search(r"<answer>.*?<\/answer>", response, re.DOTALL)
    if re.match(r"^<think>.*?<\/think>\n<answer>.*?<\/answer>$", response, re.DOTALL):
        return 1.0
    reward = 0.0
    if think_match:
        reward += 0.1
    if answer_match:
        reward += 0.5
    return reward


def paper_answer(response, numbers, target):
    all_matches = re.findall(r"<answer>(.*?)<\/answer>", response, re.DOTALL)
    if not all_matches:
        return 0.0
    answer_content = all_matches[-1]
    if not answer_content:
        return 0.0
    if not re.match(r"^[0-9+\-*/() ]+$", answer_content):
        return 0.0
    used_numbers = [int(n) for n in re.findall(r"\d+", answer_content)]
    if sorted(used_numbers) != sorted(numbers):
        return 0.0
    try:
        result = eval(answer_content, {"__builtins__": None}, {})  # the test's generated strings only
        if abs(float(result) - float(target)) < 1e-5:
            return 1.0
    except Exception:
        return 0.0
    return 0.0


def paper_reward(response, numbers, target):
    return paper_format("<think>" + response) * 0.1 + paper_answer(response, numbers, target)


def expression(rng, numbers):
    """An arithmetic expression over the numbers, right or wrong, with the operators a model writes."""
    parts = [str(n) for n in rng.sample(numbers, len(numbers))]
    if rng.random() < 0.2:
        parts[rng.randrange(len(parts))] = str(rng.randint(0, 99))  # a wrong number
    if rng.random() < 0.1:
        parts.append(str(numbers[0]))  # a number used twice
    powers = 0
    while len(parts) > 1:
        i = rng.randrange(len(parts) - 1)
        op = rng.choice(["+", "-", "*", "/", "/", "//", "**", " - "])
        if op == "**":
            if powers or len(parts[i + 1]) > 2:  # one small power: eval must finish
                op = "*"
            powers += op == "**"
        left, right = parts[i], parts[i + 1]
        if rng.random() < 0.1:
            right = f"({right} - {right})"  # division by zero when divided by
        parts[i : i + 2] = [f"({left}{op}{right})" if rng.random() < 0.7 else f"{left} {op} {right}"]
    text = parts[0]
    return rng.choice([text, f" {text} ", f"{text}\n", f"{text} = 98", f"-{text}", f"{text}\n\n", "", "  ",
                       text.replace("4", "４"), f"({text}", text, text, text])


def completion(rng, numbers):
    think = rng.choice(["I think hard.", "", "a\nb", "<think>nested</think>", "</answer>"])
    close = rng.choice(["</think>\n", "</think>", "</think>  ", "</think>\n\n", "", "</thin>\n"])
    blocks = [f"<answer>{expression(rng, numbers)}</answer>" for _ in range(rng.choice([0, 1, 1, 1, 2, 3]))]
    if rng.random() < 0.1:
        blocks.append("<answer>" + expression(rng, numbers))  # unclosed
    tail = rng.choice(["", "", "\n", " done", "\n\n", "</think>", "<answer>"])
    return think + close + rng.choice(["", "\n"]).join(blocks) + tail


def test_the_reward_equals_the_papers_on_generated_completions():
    rng = random.Random(0)
    checked, right = 0, 0
    for _ in range(4000):
        numbers = [rng.randint(1, 99) for _ in range(rng.choice([3, 4]))]
        target = rng.choice([98, "98", str(rng.randint(1, 300)), "27.4", "-11", "266.6666666666667"])
        text = completion(rng, numbers)
        ours = countdown_reward(text, {"numbers": numbers, "target": target})
        assert ours["reward"] == paper_reward(text, numbers, target), text
        checked += 1
        right += ours["answer"] == 1.0
    # The correct answers a generator hits by chance: when the target is their value.
    for _ in range(500):
        numbers = [rng.randint(1, 99) for _ in range(rng.choice([3, 4]))]
        text = completion(rng, numbers)
        found = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
        try:
            target = float(eval(found[-1], {"__builtins__": None}, {})) if found else 98
        except Exception:
            target = 98
        ours = countdown_reward(text, {"numbers": numbers, "target": target})
        assert ours["reward"] == paper_reward(text, numbers, target), text
        right += ours["answer"] == 1.0
    assert checked == 4000 and right > 50  # the comparison covers right answers, not only zeros


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_builtin_reward_scores_64kb_adversarial_completions_quickly(name):
    # `make bench-rewards` reports the times (target: under 10 ms each); this bound is generous, so
    # only a scorer that is not linear (the earlier regex took 1.3 s on 32 KB) fails it.
    for case, text in ADVERSARIAL.items():
        assert time_reward(REWARDS[name], text, repeats=1) < 0.5, (name, case)
