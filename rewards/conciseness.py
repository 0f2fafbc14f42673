"""Conciseness (paper section 4.2): reward = -|len(completion) - len(target)|, in characters.

As the paper's code: the length of the generated text as it is, nothing stripped (an earlier
version stripped whitespace, and a model learned to print only spaces, which scored as an empty
answer). `generate_length_prompts` makes small built-in data: prompts that ask for a word of a given
length; the target is such a word, so the reward asks the model to stop at the right time.
"""

from __future__ import annotations

import random
import string


def conciseness_reward(completion: str, sample: dict) -> float:
    return -abs(len(completion) - len(str(sample["target"])))


def generate_length_prompts(count: int, seed: int, lengths=(4, 6, 8)) -> list[dict]:
    """`count` distinct prompts "word of N letters: <letters>" with a target word of length N."""
    rng = random.Random(seed)
    samples, seen = [], set()
    while len(samples) < count:
        length = rng.choice(lengths)
        cue = "".join(rng.choices(string.ascii_lowercase, k=6))
        if (length, cue) in seen:
            continue
        seen.add((length, cue))
        target = "".join(rng.choices(string.ascii_lowercase, k=length))
        samples.append({"prompt": f"word of {length} letters after {cue}:", "target": target})
    return samples
