"""`make bench-learning`: the demo's recipe over 3 base-model seeds x 3 ES seeds, and the recipe it replaced.

    python -m benchmarks.learning                                     # both recipes, 3 x 3 seeds each
    python -m benchmarks.learning --recipes demo --base_seeds 0 --es_seeds 1   # one run

Each run is `make demo`'s experiment (experiments/demo.toml) with its base model `adder` pre-trained
from base seed b (0 is `adder` itself; others are `esvllm.models.build_model("adder", seed=b)`, the
same recipe from another seed) and ES's --global_seed s. `previous` is the full-rank population-32
recipe the demo ran before: the paper's z-scores and plain step at sigma 0.002, alpha 0.001. Held-out
sum_rate and accuracy (greedy, every --eval_every iterations) are recorded against the iterations'
own time and generated tokens. A run that finished under --runs with the same configuration is read
instead of repeated. Every figure of the summary (gain in sum_rate per run; median, range and runs
of at least +10 points per recipe) is recomputed from the runs' per-problem records. Writes
bench/learning.json, bench/learning.md and docs/learning.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.curves import plot_time_and_tokens, run_curve
from benchmarks.provenance import stamp

RECIPES = {
    "demo": [],  # experiments/demo.toml as it is
    "previous": ["--sigma", "0.002", "--alpha", "0.001", "--no-antithetic", "--shaping", "zscore"],
}
TARGET = 0.10  # the least gain in held-out sum_rate every seed pair should show


def one_run(recipe: str, base_seed: int, es_seed: int, args) -> dict:
    from benchmarks.variants import finished_run
    from esvllm.models import build_model
    from esvllm.run import main

    model = "adder" if base_seed == 0 else str(build_model("adder", seed=base_seed))
    argv = ["--experiment", "demo", "--model_name", model, "--global_seed", str(es_seed),
            "--num_iterations", str(args.iterations), "--eval_every", str(args.eval_every),
            "--output_dir", str(Path(args.runs) / recipe), *RECIPES[recipe], *args.flags]
    run_dir = finished_run(argv, Path(args.runs) / recipe) or main(argv)
    return {"recipe": recipe, "base_seed": base_seed, "es_seed": es_seed, "run_dir": str(run_dir),
            "points": run_curve(Path(run_dir))}


def summary(runs: list[dict]) -> dict:
    gains = [r["points"][-1]["sum_rate"] - r["points"][0]["sum_rate"] for r in runs]
    return {"runs": len(runs), "median_gain": statistics.median(gains), "min_gain": min(gains), "max_gain": max(gains),
            "at_least_target": sum(g >= TARGET for g in gains),
            "median_before": statistics.median(r["points"][0]["sum_rate"] for r in runs),
            "median_after": statistics.median(r["points"][-1]["sum_rate"] for r in runs),
            "median_seconds": statistics.median(r["points"][-1]["seconds"] for r in runs)}


def table(results: dict) -> str:
    lines = ["| recipe | flags | runs | held-out sum_rate before → after (medians) | gain: median [min, max] | "
             f"runs ≥ +{TARGET * 100:.0f} points | training s (median) | per run (base seed/ES seed: before → after) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        s = summary(runs)
        per_run = ", ".join(f"{r['base_seed']}/{r['es_seed']}: {r['points'][0]['sum_rate']:.3f} → "
                            f"{r['points'][-1]['sum_rate']:.3f}" for r in runs)
        lines.append(f"| {name} | `{' '.join(RECIPES[name]) or 'experiments/demo.toml'}` | {s['runs']} | "
                     f"{s['median_before']:.3f} → {s['median_after']:.3f} | {s['median_gain'] * 100:+.1f} "
                     f"[{s['min_gain'] * 100:+.1f}, {s['max_gain'] * 100:+.1f}] | {s['at_least_target']}/{s['runs']} | "
                     f"{s['median_seconds']:.0f} | {per_run} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    colors = dict(zip(results, ("tab:blue", "tab:orange", "tab:green")))
    series = [(name if k == 0 else None, run["points"], {"color": colors[name], "alpha": 0.6})
              for name, runs in results.items() for k, run in enumerate(runs)]
    plot_time_and_tokens(series, "sum_rate", "held-out sum_rate (greedy)",
                         "the demo task over base-model x ES seeds: one line per run", path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--base_seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--es_seeds", nargs="+", type=int, default=[42, 1, 2])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--eval_every", type=int, default=20)
    parser.add_argument("--out", default="bench")
    parser.add_argument("--runs", default="runs/learning", help="where the runs' directories go")
    parser.add_argument("--plot", default="docs/learning.png")
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="more flags for every run")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = {name: [one_run(name, b, s, args) for b in args.base_seeds for s in args.es_seeds] for name in args.recipes}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.json").write_text(json.dumps({**stamp(), "settings": vars(args), "flags": RECIPES,
                                                    "summary": {n: summary(r) for n, r in results.items()},
                                                    "results": results}, indent=2))
    text = table(results)
    (out / "learning.md").write_text(text + "\n")
    plot(results, Path(args.plot))
    print(text)
    print(f"{time.perf_counter() - started:.0f} s")
    return results


if __name__ == "__main__":
    main()
