"""`make bench`'s report: the markdown table and the plot of benchmarks.es's figures."""

from __future__ import annotations

from pathlib import Path


def markdown(results: dict) -> str:
    lines = ["| model | weights | N | ES tok/s | plain tok/s | efficiency (≥0.95) | all-at-once tok/s | batching headroom | "
             "s/iter vLLM | s/iter HF | HF / vLLM | coordinator idle (<2%) | engine peak RSS / weights |",
             "|" + "---|" * 13]
    for r in results["models"]:
        b = r["breakdown"]
        lines.append(
            f"| {r['model']} | {r['weight_bytes'] / 2**20:.1f} MiB | {r['population']} | {r['es_tokens_per_s']:.0f} | "
            f"{r['plain_tokens_per_s']:.0f} | {r['efficiency']:.2f} | {r['all_at_once_tokens_per_s']:.0f} | "
            f"{r['batching_headroom']:.2f} | {r['vllm_iteration_s']:.2f} | {r['hf_iteration_s']:.2f} | "
            f"{r['hf_over_vllm']:.2f}x | {b['coordinator_idle']:.1%} | "
            f"{r['vllm_engine_peak_rss'] / r['weight_bytes']:.1f} |")
    lines += ["", "Seconds per ES iteration by phase (medians; perturb and generate summed over members):", "",
              "| model | iteration | perturb | generate | update | sync | scoring |", "|---|---|---|---|---|---|---|"]
    for r in results["models"]:
        b = r["breakdown"]
        lines.append(f"| {r['model']} | {b['iteration_s']:.2f} | {b['perturb_s']:.2f} | {b['generate_s']:.2f} | "
                     f"{b['update_s']:.3f} | {b['sync_s']:.3f} | {b['score_s']:.3f} |")
    lines += ["", "Noise cache (each engine keeps its own members' noise for the update), before and after:", "",
              "| model | ES tok/s without → with | s/iter without → with | update s/iter without → with | "
              "efficiency without → with |", "|---|---|---|---|---|"]
    for r in results["models"]:
        off = r["without_noise_cache"]
        lines.append(f"| {r['model']} | {off['es_tokens_per_s']:.0f} → {r['es_tokens_per_s']:.0f} | "
                     f"{off['breakdown']['iteration_s']:.2f} → {r['breakdown']['iteration_s']:.2f} | "
                     f"{off['breakdown']['update_s']:.3f} → {r['breakdown']['update_s']:.3f} | "
                     f"{off['efficiency']:.2f} → {r['efficiency']:.2f} |")
    lines += ["", "Efficiency against rollout size and model size (fixed-length outputs):", "",
              "| model | N | tokens per member | ES tok/s | plain tok/s | efficiency | s/iter | perturb | generate | update | "
              "engine peak RSS / weights |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [r for r in results["models"]] + [results["long_rollouts"]] + results.get("sizes", [])
    for r in rows:
        b = r["breakdown"]
        rss = r.get("engine_peak_rss", r.get("vllm_engine_peak_rss"))
        lines.append(f"| {r['model']} | {r['population']} | {r['tokens_per_member']} | {r['es_tokens_per_s']:.0f} | "
                     f"{r['plain_tokens_per_s']:.0f} | {r['efficiency']:.2f} | {b['iteration_s']:.2f} | "
                     f"{b['perturb_s']:.2f} | {b['generate_s']:.2f} | {b['update_s']:.2f} | {rss / r['weight_bytes']:.1f} |")
    lines += ["", "Scaling (seconds per iteration):", ""]
    for r in results["models"]:
        lines.append(f"- {r['model']}, population: " + ", ".join(f"N={n}: {s:.2f}" for n, s in r["scaling"].items()))
    lines.append(f"- {results['engines_scaling_model']}, engines: " +
                 ", ".join(f"{e} engine(s): {s:.2f}" for e, s in results["engines_scaling"].items()))
    lines.append(f"- coordinator peak RSS: {results['coordinator_peak_rss'] / 2**20:.0f} MiB")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, third) = plt.subplots(1, 3, figsize=(15, 4), dpi=110)
    for r in results["models"]:
        pops = sorted(int(n) for n in r["scaling"])
        left.plot(pops, [r["scaling"][n] if n in r["scaling"] else r["scaling"][str(n)] for n in pops], "o-", label=r["model"])
    left.set_xlabel("population size N")
    left.set_ylabel("seconds per ES iteration (vLLM)")
    left.set_xscale("log", base=2)
    left.legend()
    left.grid(alpha=0.3)
    names = [r["model"] for r in results["models"]]
    x = range(len(names))
    right.bar([i - 0.2 for i in x], [r["vllm_iteration_s"] for r in results["models"]], 0.4, label="vLLM engines")
    right.bar([i + 0.2 for i in x], [r["hf_iteration_s"] for r in results["models"]], 0.4, label="HF backend")
    right.set_xticks(list(x), names)
    right.set_ylabel("seconds per ES iteration")
    right.legend()
    right.grid(alpha=0.3, axis="y")
    rows = results["models"] + [results["long_rollouts"]] + results.get("sizes", [])
    labels = [f"{r['model']}\n{r['tokens_per_member']} tok/member" for r in rows]
    third.bar(range(len(rows)), [r["efficiency"] for r in rows], 0.6)
    third.axhline(0.95, color="black", linestyle="--", linewidth=1, label="target 0.95")
    third.set_xticks(list(range(len(rows))), labels, fontsize=8)
    third.set_ylabel("ES tokens/s / plain vLLM tokens/s")
    third.set_ylim(0, 1.05)
    third.legend(loc="lower right")
    third.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
