"""Greedy evaluation of the current (base) weights on held-out samples, split across engines.

accuracy is the mean of the reward's `answer` component (Countdown: the answer is right) and
format_rate the mean of its `format` component, when the reward reports them; reward is the mean reward.
"""

from __future__ import annotations

import statistics


def evaluate_on_engines(engines, samples: list[dict], scorer, max_tokens: int) -> tuple[dict, list[dict]]:
    if not samples:
        raise ValueError("no held-out samples to evaluate on: set --test_size > 0")
    chunks = [samples[i :: len(engines)] for i in range(len(engines))]
    sampling = {"temperature": 0.0, "max_tokens": max_tokens}
    refs = [e.submit("generate", [s["prompt"] for s in chunk], sampling) for e, chunk in zip(engines, chunks) if chunk]
    rows = []
    for engine, chunk, ref in zip(engines, chunks, refs):
        completions = engine.wait(ref)
        scored = scorer.score([c["text"] for c in completions], chunk)
        for sample, completion, value, parts in zip(chunk, completions, scored["values"], scored["per_sample"]):
            rows.append({"prompt": sample["prompt"], "completion": completion["text"], "reward": value,
                         **{k: v for k, v in parts.items() if k != "status"}, "status": parts["status"]})
    order = {s["prompt"]: i for i, s in enumerate(samples)}
    rows.sort(key=lambda r: order[r["prompt"]])
    return summarize(rows), rows


def summarize(rows: list[dict]) -> dict:
    def mean_of(key):
        values = [r[key] for r in rows if key in r]
        return statistics.fmean(values) if values else None

    return {"reward": statistics.fmean(r["reward"] for r in rows), "accuracy": mean_of("answer"),
            "format_rate": mean_of("format"), "samples": len(rows)}
