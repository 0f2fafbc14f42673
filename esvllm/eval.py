"""Greedy evaluation on held-out samples: the library the training loop uses, and its CLI.

    python -m esvllm.eval --model runs/RUN/final --task countdown --data countdown.json --num_engines 2

Prints reward, accuracy and format rate, and writes one JSON line per sample (prompt, completion,
reward and its components) to --output (default: <model>/eval.jsonl). Without --data it evaluates
the held-out split the training run of the same --task, --data_sample, --test_size and --global_seed
kept apart. accuracy is the mean of the reward's `answer` component (Countdown: the answer is right),
format_rate the mean of its `format` component, and sum_rate of `sum` (addition: the number written
is the sum, whatever follows it), when the reward reports them.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

from esvllm.cli import build_parser
from engines.actor_base import EngineActorBase
from engines.variant import Job
from esvllm.config import EvalConfig


class Evaluator:
    """Scores the engines' current (base) weights on fixed held-out sets, greedy.

    With a run directory, every evaluation leaves RUN/eval/iter_NNNNNN.jsonl (one line per sample:
    its set, prompt, completion, reward, the reward's components and the sample's own fields) and one
    summary line per set in RUN/eval.jsonl (iteration = updates applied so far; 0 is the base model)."""

    def __init__(self, sets: dict[str, list[dict]] | list[dict], scorer, max_tokens: int, run_dir: Path | None = None):
        self.sets = sets if isinstance(sets, dict) else {"heldout": sets}
        empty = [name for name, samples in self.sets.items() if not samples]
        if not self.sets or empty:
            raise ValueError(f"no held-out samples to evaluate on{' in ' + ', '.join(empty) if empty else ''}: "
                             "set --test_size > 0 or --eval_data")
        self.scorer, self.max_tokens = scorer, max_tokens
        self.run_dir = Path(run_dir) if run_dir else None

    def evaluate(self, fleet, iteration: int) -> dict:
        """{set: summary}, flattened to one summary when there is one set."""
        summaries, rows = {}, []
        for name, samples in self.sets.items():
            summaries[name], set_rows = self.run(fleet, samples)
            rows += [{"set": name, **row} for row in set_rows]
        if self.run_dir is not None:
            folder = self.run_dir / "eval"
            folder.mkdir(exist_ok=True)
            write_lines(folder / f"iter_{iteration:06d}.jsonl", rows)
            for name, summary in summaries.items():
                append_line(self.run_dir / EVAL_LOG, {"iteration": iteration, "set": name, **summary})
        return next(iter(summaries.values())) if len(summaries) == 1 else summaries

    def run(self, fleet, samples: list[dict]) -> tuple[dict, list[dict]]:
        """(summary, one row per sample in the samples' order); the samples are split over the engines."""
        shares = len(fleet.engines)
        chunks = [samples[i::shares] for i in range(shares)]
        sampling = {"temperature": 0.0, "max_tokens": self.max_tokens}
        jobs = [Job(EngineActorBase.generate, ([s["prompt"] for s in chunk], sampling), i, len(chunk))
                for i, chunk in enumerate(chunks) if chunk]
        rows: list[dict | None] = [None] * len(samples)

        def on_result(job: int, completions: list[dict]) -> None:
            chunk = chunks[job]
            scored = self.scorer.score([c["text"] for c in completions], chunk)
            for k, (sample, completion) in enumerate(zip(chunk, completions)):
                parts = scored["per_sample"][k]
                rows[job + k * shares] = {
                    "prompt": sample["prompt"], "completion": completion["text"], "tokens": completion["tokens"],
                    "reward": scored["values"][k], **{key: v for key, v in parts.items() if key != "status"},
                    "status": parts["status"], "sample": {key: v for key, v in sample.items() if key != "prompt"}}

        fleet.dispatch(jobs, on_result)
        return summarize(rows), rows


EVAL_LOG = "eval.jsonl"


def first_set(summary: dict) -> dict:
    """The summary of the first evaluation set (a run with one set has it flat)."""
    return summary if "reward" in summary else next(iter(summary.values()))


def write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def append_line(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_eval_log(run_dir: Path) -> list[dict]:
    """The summary lines of RUN/eval.jsonl (a torn last line is dropped)."""
    path = Path(run_dir) / EVAL_LOG
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def trim_eval_log(run_dir: Path, iterations: int) -> None:
    """On resume: drop evaluations after the last committed iteration (it will run again)."""
    rows = [r for r in read_eval_log(run_dir) if r["iteration"] <= iterations]
    if (Path(run_dir) / EVAL_LOG).exists():
        write_lines(Path(run_dir) / EVAL_LOG, rows)


def summarize(rows: list[dict]) -> dict:
    def mean_of(key):
        values = [r[key] for r in rows if key in r]
        return statistics.fmean(values) if values else None

    summary = {"reward": statistics.fmean(r["reward"] for r in rows), "accuracy": mean_of("answer"),
               "format_rate": mean_of("format"), "samples": len(rows)}
    sum_rate = mean_of("sum")
    if sum_rate is not None:
        summary["sum_rate"] = sum_rate
    return summary


def main(argv=None) -> dict:
    parser = build_parser(EvalConfig, "python -m esvllm.eval", __doc__.splitlines()[0])
    try:
        config = EvalConfig(**vars(parser.parse_args(argv)))
        if config.resolved_device == "cuda":
            from esvllm.machine import check_gpu_ids

            check_gpu_ids(config.cuda_devices, config.gpu_ids or list(range(config.num_engines)))
        from esvllm.models import resolve_model
        from esvllm.scoring import Scorer
        from rewards.data import Formatter, load_samples, task_splits

        model = resolve_model(config.model)
        scorer = Scorer(config.reward_spec)
        formatter = Formatter(config.task, config.prompt_field, config.template, model)
        if config.data:
            samples = load_samples(config.data, formatter)
        else:
            samples = task_splits(config.task, None, config.data_sample, config.test_size, config.global_seed,
                                  formatter)[1]
        evaluator = Evaluator(samples, scorer, config.max_tokens)
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    from engines.fleet import Fleet
    from engines.options import EngineOptions
    from engines.pool import start_engines
    from engines.updatelog import UpdateLog

    pool = start_engines(model, EngineOptions.for_eval(config))  # generation only: no fp32 master
    try:
        summary, rows = evaluator.run(Fleet(pool, UpdateLog()), samples)
    finally:
        pool.shutdown()
    output = Path(config.output or Path(model) / "eval.jsonl")
    output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
    print(f"samples {summary['samples']}  reward {fmt(summary['reward'])}  accuracy {fmt(summary['accuracy'])}  "
          f"format_rate {fmt(summary['format_rate'])}"
          + (f"  sum_rate {fmt(summary['sum_rate'])}" if "sum_rate" in summary else ""))
    print(f"per-sample results: {output}")
    return summary


if __name__ == "__main__":
    main()
