"""A run's curves in one PNG, and the before/after summary of its held-out evaluations.

    python -m esvllm.plot runs/demo__adder__42__20261130-120000     # writes rewards.png in the run dir

Left: the population's training reward per iteration. Right (when the run evaluated): held-out
accuracy, format rate and reward after each number of updates, from iteration 0 (the base model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from esvllm.eval import read_eval_log
from esvllm.runlog import read_metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}: metrics.jsonl has no iterations yet")
    evals = first_set_log(run_dir)
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(12 if evals else 7, 4), dpi=120, squeeze=False)
    ax = axes[0][0]
    steps = [r["iteration"] + 1 for r in records]
    ax.fill_between(steps, [r["reward_min"] for r in records], [r["reward_max"] for r in records],
                    alpha=0.2, label="population min-max")
    ax.plot(steps, [r["reward_mean"] for r in records], label="population mean reward (training prompts)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward")
    ax.set_title(Path(run_dir).name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if evals:
        right = axes[0][1]
        x = [e["iteration"] for e in evals]
        for key, label in (("accuracy", "held-out accuracy"), ("format_rate", "held-out format rate"),
                           ("sum_rate", "held-out right sums (any format)")):
            if all(e.get(key) is not None for e in evals):
                right.plot(x, [e[key] for e in evals], "o-", label=label)
        if all(e.get("accuracy") is None for e in evals):
            right.plot(x, [e["reward"] for e in evals], "o-", label="held-out reward")
        right.set_xlabel("updates applied (0: the base model)")
        right.set_title(f"held-out evaluation ({evals[0].get('set', 'heldout')}), {evals[0]['samples']} problems "
                        "never trained on", fontsize=9)
        right.grid(alpha=0.3)
        right.legend(fontsize=8)
    fig.tight_layout()
    target = Path(out) if out else Path(run_dir) / "rewards.png"
    fig.savefig(target)
    plt.close(fig)
    return target


def learning_summary(run_dir: str | Path, window: int = 5) -> dict | None:
    """Mean training reward of the first and last `window` iterations, and the gain between them."""
    rewards = [r["reward_mean"] for r in read_metrics(run_dir)]
    if len(rewards) < 2 * window:
        return None
    first, last = sum(rewards[:window]) / window, sum(rewards[-window:]) / window
    return {"window": window, "first": first, "last": last, "gain": last - first}


def before_after(run_dir: str | Path, examples: int = 3) -> str | None:
    """A table of the first and last held-out evaluations and a few problems side by side."""
    evals = first_set_log(run_dir)
    if len(evals) < 2:
        return None
    first, last = evals[0], evals[-1]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    lines = [f"held-out ({first['samples']} problems) | after {first['iteration']} updates | after {last['iteration']} updates",
             *(f"{key:<23} | {fmt(first.get(key)):>16} | {fmt(last.get(key)):>16}"
               for key in ("accuracy", "format_rate", "sum_rate", "reward") if key in first)]
    rows = [_rows(run_dir, e["iteration"], e.get("set")) for e in (first, last)]
    if all(rows):
        pairs = list(zip(*rows))
        changed = [p for p in pairs if p[0]["completion"] != p[1]["completion"]]
        chosen = (sorted(changed, key=lambda p: p[0]["reward"] - p[1]["reward"]) + pairs)[:examples]
        if all("answer" in r for r in rows[0] + rows[1]):  # the task scores right answers: what changed
            right = lambda r: r["answer"] >= 1
            became_right = sum(not right(b) and right(a) for b, a in pairs)
            became_wrong = sum(right(b) and not right(a) for b, a in pairs)
            lines.append(f"answers: {became_right} became right, {became_wrong} became wrong, "
                         f"{len(changed) - became_right - became_wrong} other changes, {len(pairs) - len(changed)} the same")
        lines.append("examples (prompt -> before | after):")
        for before, after in chosen:
            lines.append(f"  {before['prompt']!r} -> {before['completion']!r} ({before['reward']:.2f}) | "
                         f"{after['completion']!r} ({after['reward']:.2f})")
    return "\n".join(lines)


def _rows(run_dir, iteration: int, name: str | None) -> list[dict] | None:
    path = Path(run_dir) / "eval" / f"iter_{iteration:06d}.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if r.get("set") == name] if name else rows


def first_set_log(run_dir) -> list[dict]:
    """eval.jsonl's summaries of the first evaluation set, in order."""
    evals = read_eval_log(run_dir)
    return [e for e in evals if e.get("set") == evals[0].get("set")] if evals else []


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    parser.add_argument("--out", help="PNG path (default: RUN_DIR/rewards.png)")
    args = parser.parse_args(argv)
    print(plot_run(args.run_dir, args.out))
    table = before_after(args.run_dir)
    if table:
        print(table)


if __name__ == "__main__":
    main()
