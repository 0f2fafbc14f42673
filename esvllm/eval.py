"""Evaluate a model on a task's held-out data with vLLM engines (greedy).

    python -m esvllm.eval --model runs/RUN/final --task countdown --data countdown.json --num_engines 2

Prints reward, accuracy and format rate, and writes one JSON line per sample (prompt, completion,
reward and its components) to --output (default: <model>/eval.jsonl). Without --data it evaluates
the held-out split the training run of the same --task, --data_sample, --test_size and --global_seed
kept apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m esvllm.eval", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF checkpoint directory or built-in model name")
    parser.add_argument("--task", default="countdown", help="countdown or conciseness")
    parser.add_argument("--data", help="data file (.json, .jsonl, HF dataset dir); all of it is evaluated")
    parser.add_argument("--reward", help="reward name or module:function (default: the task's)")
    parser.add_argument("--data_sample", type=int, default=200, help="training samples to skip (built-in data)")
    parser.add_argument("--test_size", type=int, default=64, help="held-out samples (built-in data)")
    parser.add_argument("--global_seed", type=int, default=42, help="seed of the built-in data")
    parser.add_argument("--num_engines", type=int, default=1, help="engines evaluating in parallel")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="auto", help="model dtype in vLLM")
    parser.add_argument("--max_tokens", type=int, default=1024, help="most tokens per completion")
    parser.add_argument("--max_model_len", type=int, default=2048, help="longest prompt + completion")
    parser.add_argument("--output", help="per-sample JSONL (default: <model>/eval.jsonl)")
    args = parser.parse_args(argv)

    from engines.pool import EngineOptions, EnginePool
    from esvllm.evaluation import evaluate_on_engines
    from esvllm.models import resolve_model
    from esvllm.scoring import Scorer
    from rewards.data import load_samples, task_splits

    try:
        model = resolve_model(args.model)
        scorer = Scorer(args.reward or args.task)
        if args.data:
            samples = load_samples(args.data)
        else:
            samples = task_splits(args.task, None, args.data_sample, args.test_size, args.global_seed)[1]
        options = EngineOptions(device=args.device, num_engines=args.num_engines, dtype=args.precision,
                                max_model_len=args.max_model_len)
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    pool = EnginePool.start(model, options)
    try:
        summary, rows = evaluate_on_engines(pool.engines, samples, scorer, args.max_tokens)
    finally:
        pool.shutdown()
    output = Path(args.output or Path(model) / "eval.jsonl")
    output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
    print(f"samples {summary['samples']}  reward {fmt(summary['reward'])}  accuracy {fmt(summary['accuracy'])}  "
          f"format_rate {fmt(summary['format_rate'])}")
    print(f"per-sample results: {output}")
    return summary


if __name__ == "__main__":
    main()
