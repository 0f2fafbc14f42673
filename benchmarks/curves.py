"""Held-out curves of ES runs against what they cost: the iterations' own time and generated tokens,
read from a run directory; and the two-panel figure the learning benchmarks draw."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def run_curve(run_dir: Path) -> list[dict]:
    """Each evaluation of a run, recomputed from its per-problem records, with the training time and
    the generated tokens of the iterations before it (evaluation time excluded)."""
    from esvllm.runlog import read_metrics

    seconds, tokens = [0.0], [0]
    for m in read_metrics(run_dir):
        seconds.append(seconds[-1] + m["time"]["iteration_s"])
        tokens.append(tokens[-1] + m["tokens"])
    points = []
    for path in sorted((Path(run_dir) / "eval").glob("iter_*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        iteration = int(path.stem.split("_")[1])
        points.append({"iteration": iteration, "seconds": seconds[iteration], "tokens": tokens[iteration],
                       **scores(records)})
    return points


def scores(records: list[dict]) -> dict:
    """Accuracy, sum_rate (when the task records it) and mean reward of per-problem records."""
    sums = [r["sum"] for r in records if "sum" in r]
    return {"accuracy": statistics.fmean(r["answer"] for r in records),
            "sum_rate": statistics.fmean(sums) if len(sums) == len(records) else None,
            "reward": statistics.fmean(r["reward"] for r in records), "samples": len(records)}


def plot_time_and_tokens(series: list[tuple], y: str, ylabel: str, title: str, path: Path) -> None:
    """`y` of each series against training seconds (left) and generated tokens (right); a series is
    (label or None, points, matplotlib style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120, sharey=True)
    for ax, key, label in ((axes[0], "seconds", "training time (s)"), (axes[1], "tokens", "generated tokens")):
        for name, points, style in series:
            ax.plot([p[key] for p in points], [p[y] for p in points], label=name, **style)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
