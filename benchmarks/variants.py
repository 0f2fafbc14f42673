"""`make bench-variants`: ES options and low-rank mode on the demo task, same budget, several seeds.

    python -m benchmarks.variants                                  # the five variants of docs/usage/es-options.md, seeds 1 2 3
    python -m benchmarks.variants --variants default antithetic --seeds 1 --iterations 40

Each variant is the demo experiment (experiments/demo.toml: the pre-trained `adder`, addition problems,
population 32) with a few flags changed, for the same number of iterations x population, evaluated
greedy on the same held-out problems before any update and every --eval_every iterations. A run that
already finished under --runs with the same configuration is read instead of repeated. Writes
bench/variants.json, bench/variants.md and docs/variants.png (held-out accuracy: mean and spread
over seeds, per variant).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.provenance import stamp

VARIANTS = {
    "default": [],  # the paper's: z-scores, plain step, i.i.d. full-rank noise
    "antithetic": ["--antithetic"],
    "centered_rank": ["--shaping", "centered_rank"],
    # Centered ranks have a standard deviation of 0.298 at N = 32 (z-scores: 1), so the same alpha
    # takes steps 3.4x shorter; this one scales alpha to the z-score step.
    "centered_rank_alpha_x3.4": ["--shaping", "centered_rank", "--alpha", "0.0034"],
    "adam": ["--optimizer", "adam", "--alpha", "0.0002"],  # alpha is Adam's per-element step here
    "lowrank_r1": ["--perturbation", "lowrank", "--rank", "1"],
    "lowrank_r4": ["--perturbation", "lowrank", "--rank", "4"],
    "sigma_0.01": ["--sigma", "0.01", "--alpha", "0.005", "--batch_size", "64"],  # larger steps
    # (Almost) no update: alpha 1e-12 moves no weight by more than ~5e-12 (measured), so the held-out
    # answers stay the base model's; what the batches alone do to the training reward.
    "no_update": ["--alpha", "1e-12"],
    # The same 128 training problems every iteration: does ES fit what it is shown?
    "fixed_128": ["--data_sample", "128"],
}

REPORT = ["default", "antithetic", "centered_rank", "centered_rank_alpha_x3.4", "adam"]  # the comparison in docs/usage/es-options.md


def finished_run(argv: list[str], runs: Path) -> Path | None:
    """A run under `runs` that finished (has final/) with exactly this configuration and the same
    model build, if any."""
    from esvllm.models import resolve_model
    from esvllm.run import resolve_config

    wanted = resolve_config(argv).to_dict()
    wanted["model_path"] = Path(resolve_model(wanted["model_name"])).name  # a built-in's name holds its digest
    for config_file in sorted(runs.glob("*/config.json")):
        saved = json.loads(config_file.read_text())
        saved["model_path"] = Path(saved.get("model_path") or "").name
        same = all(saved.get(key) == value for key, value in wanted.items())
        if same and (config_file.parent / "final").is_dir():
            return config_file.parent
    return None


def run_variant(name: str, seed: int, iterations: int, eval_every: int, out: Path) -> dict:
    from esvllm.eval import read_eval_log
    from esvllm.run import main

    argv = ["--experiment", "demo", "--global_seed", str(seed), "--num_iterations", str(iterations),
            "--eval_every", str(eval_every), "--output_dir", str(out / name), *VARIANTS[name]]
    run_dir = finished_run(argv, out / name)
    if run_dir is not None:  # an interrupted benchmark goes on where it stopped
        print(f"{name} seed {seed}: reusing the finished run {run_dir}")
    else:
        run_dir = main(argv)
    from esvllm.runlog import read_metrics

    train = [record["reward_mean"] for record in read_metrics(run_dir)]
    return {"evals": [{"iteration": e["iteration"], "accuracy": e["accuracy"], "reward": e["reward"],
                       "sum_rate": e.get("sum_rate")} for e in read_eval_log(run_dir)],
            # mean over members of each iteration's batch, first and last 5 iterations
            "train_reward_first5": statistics.fmean(train[:5]), "train_reward_last5": statistics.fmean(train[-5:])}


def table(results: dict) -> str:
    lines = ["| variant | flags | held-out accuracy before | after (mean ± sd over seeds) | change | per seed | "
             "right sums (any format), before → after | training reward, first 5 → last 5 iterations |",
             "|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        before = [r["evals"][0]["accuracy"] for r in runs]
        after = [r["evals"][-1]["accuracy"] for r in runs]
        change = [a - b for a, b in zip(after, before)]
        spread = statistics.pstdev(after) if len(after) > 1 else 0.0
        lines.append(f"| {name} | `{' '.join(VARIANTS[name]) or '(the paper’s)'}` | {statistics.fmean(before):.3f} | "
                     f"{statistics.fmean(after):.3f} ± {spread:.3f} | {statistics.fmean(change):+.3f} | "
                     + ", ".join(f"{b:.3f}→{a:.3f}" for b, a in zip(before, after)) + " | "
                     + _sums(runs) + " | "
                     + f"{statistics.fmean(r['train_reward_first5'] for r in runs):.3f} → "
                     + f"{statistics.fmean(r['train_reward_last5'] for r in runs):.3f} |")
    return "\n".join(lines)


def _sums(runs: list[dict]) -> str:
    """Mean held-out sum_rate before → after, when the task records it."""
    if any(r["evals"][0].get("sum_rate") is None for r in runs):
        return "n/a"
    return (f"{statistics.fmean(r['evals'][0]['sum_rate'] for r in runs):.3f} → "
            f"{statistics.fmean(r['evals'][-1]['sum_rate'] for r in runs):.3f}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for name, runs in results.items():
        x = [e["iteration"] for e in runs[0]["evals"]]
        values = list(zip(*[[e["accuracy"] for e in r["evals"]] for r in runs]))
        mean = [statistics.fmean(v) for v in values]
        ax.plot(x, mean, "o-", label=name)
        ax.fill_between(x, [min(v) for v in values], [max(v) for v in values], alpha=0.12)
    ax.set_xlabel("updates applied")
    ax.set_ylabel("held-out accuracy (greedy, exact match)")
    ax.set_title("ES variants on the demo task: mean over seeds, band = min..max", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=REPORT, choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--eval_every", type=int, default=10)
    parser.add_argument("--out", default="bench")
    parser.add_argument("--runs", default="runs/variants", help="where the runs' directories go")
    args = parser.parse_args(argv)
    results, started = {}, time.perf_counter()
    for name in args.variants:
        results[name] = [run_variant(name, seed, args.iterations, args.eval_every, Path(args.runs))
                         for seed in args.seeds]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "variants.json").write_text(json.dumps({**stamp(), "settings": vars(args),
                                                    "flags": VARIANTS, "results": results}, indent=2))
    text = table(results)
    (out / "variants.md").write_text(text + "\n")
    plot(results, Path("docs") / "variants.png")
    print(text)
    print(f"{time.perf_counter() - started:.0f} s")
    return results


if __name__ == "__main__":
    main()
