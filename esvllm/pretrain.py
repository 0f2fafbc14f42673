"""Supervised pre-training of a built-in model on its task's pre-training problems (no hub, no ES).

The demo needs a base model that already does its task sometimes, so that ES has something to
improve and held-out accuracy can show it. The demo's corpus writes 55% of its sums with the last
digit one too high ("23+58=" -> "82"; a 9 becomes 0, with no carry), so the base model, greedy, mostly
repeats that error; the sum itself is the task's answer (docs/demo.md says why). `pretrain` trains a freshly initialised Qwen2 with plain next-token cross-entropy on
"prompt + answer + <eos>" (loss on the answer and <eos> only), AdamW, fixed seed, one CPU thread: the
same bits on every build on a machine.
"""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a built-in model is pre-trained: task problems, steps and optimiser."""

    task: str = "addition"
    steps: int = 600
    batch_size: int = 128
    learning_rate: float = 3e-3
    warmup: int = 20
    final_lr_fraction: float = 0.05  # the learning rate decays linearly to this fraction (1.0: constant)
    seed: int = 0
    # Share of pre-training answers written with the last digit one too high (last_digit_off): an
    # error of the corpus that the task's exact-match answer (the sum) does not share.
    off_by_one_fraction: float = 0.0


def pretraining_samples(task: str) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of the task's pre-training pool (disjoint from ES and held-out problems)."""
    if task != "addition":
        raise ValueError(f"no pre-training data for task {task!r}")
    from rewards.addition import make_sample, problems

    return [(s["prompt"], str(s["target"])) for s in (make_sample(a, b) for a, b in problems("pretrain"))]


def pretrain(model, tokenizer, recipe: Recipe, progress: bool = True) -> list[float]:
    """Train `model` in place; returns the loss of every step."""
    import torch
    from tqdm import tqdm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: reductions in the same order on every build
    try:
        torch.manual_seed(recipe.seed)
        rng = random.Random(recipe.seed)
        data = pretraining_samples(recipe.task)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / recipe.warmup)
            * max(recipe.final_lr_fraction, 1 - (1 - recipe.final_lr_fraction) * step / recipe.steps))
        losses = []
        model.train()
        bar = tqdm(range(recipe.steps), desc=f"pre-training ({recipe.task})", disable=not progress, unit="step")
        for _ in bar:
            ids, labels = batch(tokenizer, draw(data, recipe, rng))
            loss = model(input_ids=ids, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        model.eval()
        return losses
    finally:
        torch.set_num_threads(threads)


def draw(data: list[tuple[str, str]], recipe: Recipe, rng: random.Random) -> list[tuple[str, str]]:
    """One step's (prompt, answer) pairs, as the corpus writes them: each answer with its last digit
    one too high with probability `off_by_one_fraction`."""
    pairs = rng.sample(data, recipe.batch_size)
    if not recipe.off_by_one_fraction:
        return pairs
    return [(prompt, last_digit_off(answer) if rng.random() < recipe.off_by_one_fraction else answer)
            for prompt, answer in pairs]


def last_digit_off(answer: str) -> str:
    """The number with its last digit one higher, 9 wrapping to 0 without a carry: "81" -> "82", "49" -> "40"."""
    return answer[:-1] + str((int(answer[-1]) + 1) % 10)


def batch(tokenizer, pairs: list[tuple[str, str]]):
    """Right-padded input ids, and labels that are -100 except on the answer and <eos>."""
    import torch

    rows, targets = [], []
    for prompt, answer in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + a)
        targets.append([-100] * len(p) + a)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row, target) in enumerate(zip(rows, targets)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(target)] = torch.tensor(target)
    return ids, labels
