"""`make bench-rewards`: every built-in reward on 64 KB adversarial completions, in milliseconds.

Degenerate completions are common in fine-tuning (a model repeating a tag thousands of times); a
reward must score any of them in linear time. Target: under 10 ms per completion of up to 64 KB.

    python -m benchmarks.rewards --json bench/rewards.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

LIMIT = 65536
SAMPLE = {"numbers": [44, 19, 35], "target": 98}
ADVERSARIAL = {
    "opening tags": "<answer>" * 8192,
    "closing tags": "</answer>" * 7282,
    "think tags": "<think></think>" * 4369,
    "parentheses": "<answer>" + "(" * 32000 + "44+19+35" + ")" * 32000 + "</answer>",
    "unary minus": "<answer>" + "-" * 65000 + "44+19+35</answer>",
    "long sum": "<answer>" + "1+" * 32000 + "1</answer>",
    "digits": "<answer>" + "9" * 65000 + "</answer>",
    "spaces": "</think>\n<answer>44 +" + " " * 65000 + "19 + 35</answer>",
    "newlines": "\n" * 65536,
    "powers": ("</think>\n<answer>(" + "4" * 50 + "**") * 1000,
}


def time_reward(fn, text: str, repeats: int = 5) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(text[:LIMIT], SAMPLE)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main(argv=None) -> dict:
    from rewards import REWARDS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    results = {name: {case: time_reward(fn, text) * 1e3 for case, text in ADVERSARIAL.items()}
               for name, fn in sorted(REWARDS.items())}
    cases = list(ADVERSARIAL)
    print("| reward | " + " | ".join(cases) + " | slowest (target < 10 ms) |")
    print("|---|" + "---|" * (len(cases) + 1))
    for name, times in results.items():
        print(f"| {name} | " + " | ".join(f"{times[c]:.2f}" for c in cases) + f" | {max(times.values()):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
