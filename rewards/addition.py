"""Addition: "23+58=" -> "81". The CPU demo's task: exact-match checkable, learnable by a 0.3M model.

The reward is the paper's Countdown shape on a smaller problem: `answer` is 1 when the completion is
exactly the sum's digits (the model stops with its end-of-sequence token; nothing is stripped, so
spaces, a trailing period or a second number are wrong) and `format` is 1 when it is a plain number.
reward = 0.1 * format + answer. `sum` (not in the reward) is 1 when the completion's leading number is
the sum, whatever follows it ("81." counts): it tells arithmetic from format in the evaluation records.

Problems (a, b) with a, b < 100 are split by a hash of the pair into three disjoint pools: the
built-in `adder` model's supervised pre-training (10/16 of the pairs), ES training (5/16) and the
held-out evaluation (1/16). A held-out problem is never seen before it is evaluated.
"""

from __future__ import annotations

import hashlib
import random
import re

MAX_OPERAND = 99
NUMBER = re.compile(r"0|[1-9][0-9]*")  # used with fullmatch: no trailing newline slips through
LEADING_NUMBER = re.compile(r"[0-9]+")
POOLS = {"pretrain": range(0, 10), "train": range(10, 15), "heldout": range(15, 16)}


def addition_reward(completion: str, sample: dict) -> dict:
    fmt = 1.0 if len(completion) <= 8 and NUMBER.fullmatch(completion) else 0.0
    answer = 1.0 if completion == str(sample["target"]) else 0.0
    leading = LEADING_NUMBER.match(completion)
    right_sum = 1.0 if leading and leading.group() == str(sample["target"]) else 0.0
    return {"reward": 0.1 * fmt + answer, "format": fmt, "answer": answer, "sum": right_sum}


def pool_of(a: int, b: int) -> str:
    bucket = hashlib.blake2b(f"{a}+{b}".encode(), digest_size=2).digest()[0] % 16
    return next(name for name, buckets in POOLS.items() if bucket in buckets)


def problems(pool: str) -> list[tuple[int, int]]:
    """Every (a, b) of a pool, in a fixed order."""
    return [(a, b) for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1) if pool_of(a, b) == pool]


def make_sample(a: int, b: int) -> dict:
    return {"prompt": f"{a}+{b}=", "target": a + b, "numbers": [a, b]}


def addition_splits(train_size: int, test_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test): `train_size` problems of the ES training pool (shuffled by `seed`) and the
    first `test_size` of the held-out pool (in a fixed order, the same for every run)."""
    train, heldout = problems("train"), problems("heldout")
    if train_size > len(train) or test_size > len(heldout):
        raise ValueError(f"addition has {len(train)} training and {len(heldout)} held-out problems; asked for "
                         f"--data_sample {train_size} and --test_size {test_size}")
    random.Random(seed).shuffle(train)
    random.Random(0).shuffle(heldout)
    return [make_sample(a, b) for a, b in train[:train_size]], [make_sample(a, b) for a, b in heldout[:test_size]]
