"""Greedy evaluation on held-out samples: the library the training loop uses, and its CLI.

    python -m esvllm.eval --model runs/RUN/final --task countdown --data countdown.json --num_engines 2

Prints reward, accuracy and format rate, and writes one JSON line per sample (prompt, completion,
reward and its components) to --output (default: <model>/eval.jsonl). Without --data it evaluates
the held-out split the training run of the same --task, --data_sample, --test_size and --global_seed
kept apart. accuracy is the mean of the reward's `answer` component (Countdown: the answer is right)
and format_rate the mean of its `format` component, when the reward reports them.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from esvllm.cli import build_parser
from esvllm.config import EvalConfig


class Evaluator:
    """Scores the engines' current (base) weights on fixed held-out samples, greedy."""

    def __init__(self, samples: list[dict], scorer, max_tokens: int):
        if not samples:
            raise ValueError("no held-out samples to evaluate on: set --test_size > 0")
        self.samples, self.scorer, self.max_tokens = samples, scorer, max_tokens

    def evaluate(self, fleet, iteration: int | None = None) -> dict:
        summary, _rows = self.run(fleet)
        return summary

    def run(self, fleet) -> tuple[dict, list[dict]]:
        """(summary, one row per sample in the samples' order); the samples are split over the engines."""
        shares = len(fleet.engines)
        chunks = [self.samples[i::shares] for i in range(shares)]
        sampling = {"temperature": 0.0, "max_tokens": self.max_tokens}
        jobs = [("generate", [s["prompt"] for s in chunk], sampling) for chunk in chunks if chunk]
        rows: list[dict | None] = [None] * len(self.samples)

        def on_result(job: int, completions: list[dict]) -> None:
            chunk = chunks[job]
            scored = self.scorer.score([c["text"] for c in completions], chunk)
            for k, (sample, completion) in enumerate(zip(chunk, completions)):
                parts = scored["per_sample"][k]
                rows[job + k * shares] = {"prompt": sample["prompt"], "completion": completion["text"],
                                          "reward": scored["values"][k],
                                          **{key: v for key, v in parts.items() if key != "status"},
                                          "status": parts["status"]}

        fleet.dispatch(jobs, on_result)
        return summarize(rows), rows


def summarize(rows: list[dict]) -> dict:
    def mean_of(key):
        values = [r[key] for r in rows if key in r]
        return statistics.fmean(values) if values else None

    return {"reward": statistics.fmean(r["reward"] for r in rows), "accuracy": mean_of("answer"),
            "format_rate": mean_of("format"), "samples": len(rows)}


def main(argv=None) -> dict:
    parser = build_parser(EvalConfig, "python -m esvllm.eval", __doc__.splitlines()[0])
    try:
        config = EvalConfig(**vars(parser.parse_args(argv)))
        from esvllm.models import resolve_model
        from esvllm.scoring import Scorer
        from rewards.data import load_samples, task_splits

        model = resolve_model(config.model)
        scorer = Scorer(config.reward_spec)
        if config.data:
            samples = load_samples(config.data)
        else:
            samples = task_splits(config.task, None, config.data_sample, config.test_size, config.global_seed)[1]
        evaluator = Evaluator(samples, scorer, config.max_tokens)
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    from engines.fleet import Fleet
    from engines.pool import EngineOptions, EnginePool
    from esvllm.updatelog import UpdateLog

    options = EngineOptions(device=config.device, backend=config.engine, num_engines=config.num_engines,
                            dtype=config.precision, max_model_len=config.max_model_len)
    pool = EnginePool.start(model, options)
    try:
        summary, rows = evaluator.run(Fleet(pool, UpdateLog()))
    finally:
        pool.shutdown()
    output = Path(config.output or Path(model) / "eval.jsonl")
    output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
    print(f"samples {summary['samples']}  reward {fmt(summary['reward'])}  accuracy {fmt(summary['accuracy'])}  "
          f"format_rate {fmt(summary['format_rate'])}")
    print(f"per-sample results: {output}")
    return summary


if __name__ == "__main__":
    main()
