"""Draw a run's reward curves (and eval curves, when logged) into a PNG.

    python -m esvllm.plot runs/demo__tiny__42__20261128-120000      # writes rewards.png in the run dir
"""

from __future__ import annotations

import argparse
from pathlib import Path

from esvllm.runlog import read_metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}: metrics.jsonl has no iterations yet")
    steps = [r["iteration"] + 1 for r in records]
    mean = [r["reward_mean"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.fill_between(steps, [r["reward_min"] for r in records], [r["reward_max"] for r in records],
                    alpha=0.2, label="population min-max")
    ax.plot(steps, mean, label="population mean reward")
    evals = [(r["iteration"] + 1, r["eval"]["reward"]) for r in records if "eval" in r]
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out eval reward")
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward")
    ax.set_title(Path(run_dir).name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    target = Path(out) if out else Path(run_dir) / "rewards.png"
    fig.savefig(target)
    plt.close(fig)
    return target


def learning_summary(run_dir: str | Path, window: int = 5) -> dict | None:
    """Mean reward of the first and last `window` iterations, and the gain between them."""
    rewards = [r["reward_mean"] for r in read_metrics(run_dir)]
    if len(rewards) < 2 * window:
        return None
    first, last = sum(rewards[:window]) / window, sum(rewards[-window:]) / window
    return {"window": window, "first": first, "last": last, "gain": last - first}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Plot a run's reward curves to a PNG.")
    parser.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    parser.add_argument("--out", help="PNG path (default: RUN_DIR/rewards.png)")
    args = parser.parse_args(argv)
    print(plot_run(args.run_dir, args.out))


if __name__ == "__main__":
    main()
