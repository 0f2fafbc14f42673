"""Low-rank mode against full-rank ES and plain vLLM generating all members' requests at once; and
antithetic pairs' ES efficiency.

    python -m benchmarks.lowrank                      # tiny and small, two shapes; part of `make bench`
    python -m benchmarks.lowrank --models tiny --shapes 2x100
    python -m benchmarks.lowrank --shapes             # only the antithetic efficiency (keeps the rows)
    python -m benchmarks.lowrank --shapes --rounds 5  # the same, 5 rounds (about 14 minutes)

Per model and shape (prompts x new tokens per member, population 30, two engines, fixed-length
outputs so every variant generates the same tokens), in one run: seconds per ES iteration full-rank
(one member per generate call) and low-rank (each engine's members in one call, as LoRA adapters),
and the all-at-once ceiling: the same engines generating all members' requests in one call per
engine with no ES at all. Writes bench/lowrank.json, also under "lowrank" in bench/results.json,
with `lowrank_speedup_over_full` and `lowrank_fraction_of_ceiling` per shape, and per member the time
to write a member's adapters into vLLM's LoRA slots against a floor for the other route (saving and
reading the same adapters as a file, before vLLM's own loading). Then the ES efficiency
(ES tokens/s over plain vLLM tokens/s, one member's prompts per call) of the small model at 512
tokens per member (16 prompts x 32), with and without antithetic pairs (`antithetic_efficiency`), each
against plain generation (queued two calls deep per engine, as ES dispatches) measured in the same
round, median of 3 rounds (`--rounds`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.es import Bench, breakdown, start_pool
from benchmarks.provenance import stamp

SHAPES = {"2x100": (2, 100), "16x32": (16, 32)}  # the paper's conciseness shape, and a 16-prompt one


def seconds_per_iteration(bench: Bench, pool, population: int, engines: int, lowrank: bool) -> tuple[float, float, float]:
    """(median s/iter, median ES tokens/s, median perturb s per member) of fixed-length ES iterations."""
    config = bench.config(population, engines, "vllm")
    if lowrank:
        config.perturbation, config.rank = "lowrank", 1
    records = bench.es_iterations(pool, config, fixed_length=True)
    seconds = statistics.median(r["time"]["iteration_s"] for r in records)
    return (seconds, statistics.median(r["tokens"] / r["time"]["iteration_s"] for r in records),
            statistics.median(r["time"]["perturb_s"] for r in records) / population)


def adapter_file_route_s(model: str, rank: int = 1, members: int = 5) -> float:
    """A floor for loading members through vLLM's LoRA files instead of writing its slots: the time
    to draw one member's adapters, save them as safetensors and read them back (median over members),
    before vLLM would parse, copy and activate them."""
    import tempfile

    from safetensors.torch import load_file, save_file

    from engines.es_state import is_lowrank_target
    from kernels.lowrank import factors
    from esvllm.models import resolve_model

    weights = load_file(str(next(Path(resolve_model(model)).glob("*.safetensors"))))
    targets = {n: tuple(t.shape) for n, t in weights.items() if is_lowrank_target(n, t)}
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(members):
            started = time.perf_counter()
            tensors = {}
            for name, shape in targets.items():
                a, b = factors(seed, name, shape, rank)
                tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = b.t().contiguous(), a
            save_file(tensors, f"{tmp}/adapter_model.safetensors")
            load_file(f"{tmp}/adapter_model.safetensors")
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def compare(bench: Bench, model: str, population: int, engines: int) -> dict:
    full_pool = start_pool(bench, model, engines)
    try:
        full_s, full_tps, full_perturb = seconds_per_iteration(bench, full_pool, population, engines, lowrank=False)
        ceiling_tps = bench.plain_generate(full_pool, population, all_at_once=True)
    finally:
        full_pool.shutdown()
    low_pool = start_pool(bench, model, engines, lowrank_slots=-(-population // engines))
    try:
        low_s, low_tps, slot_write = seconds_per_iteration(bench, low_pool, population, engines, lowrank=True)
    finally:
        low_pool.shutdown()
    return {"model": model, "population": population, "engines": engines, "prompts": len(bench.samples),
            "max_tokens": bench.max_tokens, "full_iteration_s": full_s, "full_tokens_per_s": full_tps,
            "lowrank_iteration_s": low_s, "lowrank_tokens_per_s": low_tps, "all_at_once_tokens_per_s": ceiling_tps,
            "lowrank_speedup_over_full": full_s / low_s, "lowrank_fraction_of_ceiling": low_tps / ceiling_tps,
            "full_fraction_of_ceiling": full_tps / ceiling_tps, "full_perturb_s_per_member": full_perturb,
            "lowrank_slot_write_s_per_member": slot_write, "lowrank_file_route_floor_s_per_member": adapter_file_route_s(model)}


def antithetic_efficiency(model: str, population: int, engines: int, iterations: int, device: str,
                          rounds: int = 3) -> dict:
    """ES efficiency at 16 prompts x 32 tokens per member, without and with antithetic pairs.

    Each round measures plain generation and then both ES variants (their order alternating), and
    each variant's efficiency is ES tokens/s over the same round's plain tokens/s: a shared machine's
    speed drifts over minutes, and a ratio of figures taken minutes apart carries that drift. Plain
    generation queues calls as ES dispatch does (two per engine), so neither waits on round trips."""
    from engines.variant import PIPELINE_DEPTH

    bench = Bench(iterations, 16, 32, device)
    pool = start_pool(bench, model, engines)
    try:
        per_round = {"plain_tokens_per_s": [], "independent": [], "antithetic": []}
        for r in range(rounds):
            plain = bench.plain_generate(pool, population, all_at_once=False, depth=PIPELINE_DEPTH)
            per_round["plain_tokens_per_s"].append(plain)
            for name in (("independent", "antithetic") if r % 2 == 0 else ("antithetic", "independent")):
                config = bench.config(population, engines, "vllm")
                config.antithetic = name == "antithetic"
                records = bench.es_iterations(pool, config, fixed_length=True)
                tps = statistics.median(x["tokens"] / x["time"]["iteration_s"] for x in records)
                per_round[name].append({"efficiency": tps / plain, "es_tokens_per_s": tps,
                                        "iteration_s": statistics.median(x["time"]["iteration_s"] for x in records),
                                        # median seconds per phase; perturb_s and generate_s summed over engines
                                        "breakdown": breakdown(records, engines)})
        out = {"model": model, "population": population, "tokens_per_member": 512, "rounds": rounds,
               "plain_tokens_per_s": statistics.median(per_round["plain_tokens_per_s"]), "per_round": per_round}
        for name in ("independent", "antithetic"):
            runs = per_round[name]
            middle = sorted(runs, key=lambda x: x["efficiency"])[len(runs) // 2]
            out[name] = {"efficiency": statistics.median(x["efficiency"] for x in runs),
                         "efficiencies": [x["efficiency"] for x in runs],
                         "iteration_s": statistics.median(x["iteration_s"] for x in runs),
                         "breakdown": middle["breakdown"]}  # of the round with the median efficiency
        return out
    finally:
        pool.shutdown()


def merge_into_results(path: Path, figures: dict) -> None:
    """`make bench` runs benchmarks.es first: its results.json gets these figures under "lowrank"."""
    results = json.loads(path.read_text()) if path.exists() else {}
    results["lowrank"] = figures
    path.write_text(json.dumps(results, indent=2))


def markdown(rows: list[dict]) -> str:
    lines = ["| model | prompts x tokens | N | full-rank s/iter | low-rank s/iter | speed-up (target 2x at 2x100) | "
             "full tok/s | low-rank tok/s | all-at-once tok/s | low-rank / ceiling |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['model']} | {r['prompts']}x{r['max_tokens']} | {r['population']} | {r['full_iteration_s']:.2f} | "
                     f"{r['lowrank_iteration_s']:.2f} | {r['lowrank_speedup_over_full']:.2f}x | {r['full_tokens_per_s']:.0f} | "
                     f"{r['lowrank_tokens_per_s']:.0f} | {r['all_at_once_tokens_per_s']:.0f} | "
                     f"{r['lowrank_fraction_of_ceiling']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small"])
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES),
                        help="none: only the antithetic figure; the low-rank rows of the last run are kept")
    parser.add_argument("--population", type=int, default=30)
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations per figure (after a warm-up)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--antithetic_model", default="small", help="model of the antithetic efficiency figure ('' skips it)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the antithetic efficiency figure (median reported)")
    parser.add_argument("--out", default="bench")
    args = parser.parse_args(argv)
    from engines.ray_node import init_ray

    init_ray(num_cpus=2 if args.device == "cpu" else None)
    rows = []
    for model in args.models:
        for shape in args.shapes:
            prompts, tokens = SHAPES[shape]
            started = time.perf_counter()
            rows.append(compare(Bench(args.iterations, prompts, tokens, args.device), model, args.population, args.engines))
            print(f"{model} {shape}: {time.perf_counter() - started:.0f} s", flush=True)
    anti = antithetic_efficiency(args.antithetic_model, 16, args.engines, args.iterations, args.device, args.rounds) \
        if args.antithetic_model else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    date = time.strftime("%Y-%m-%d")
    figures = {**stamp(), "rows": rows, "antithetic_efficiency": anti and {"date": date, **anti}}
    if not args.shapes and (out / "lowrank.json").is_file():  # keep the rows (and their date) measured before
        previous = json.loads((out / "lowrank.json").read_text())
        figures.update(date=previous["date"], rows=previous["rows"])
        rows = previous["rows"]
    (out / "lowrank.json").write_text(json.dumps(figures, indent=2))
    merge_into_results(out / "results.json", figures)
    print(markdown(rows))
    for r in rows:
        print(f"{r['model']} {r['prompts']}x{r['max_tokens']}: per member, full-rank perturb {r['full_perturb_s_per_member'] * 1e3:.1f} ms, "
              f"low-rank slot write {r['lowrank_slot_write_s_per_member'] * 1e3:.1f} ms, adapter file route floor "
              f"{r['lowrank_file_route_floor_s_per_member'] * 1e3:.1f} ms")
    if anti:
        print(f"ES efficiency, {anti['model']}, 512 tokens per member: independent members "
              f"{anti['independent']['efficiency']:.2f}, antithetic pairs {anti['antithetic']['efficiency']:.2f} "
              f"(target >= 0.9; median of {anti['rounds']} rounds: "
              f"{', '.join(f'{e:.2f}' for e in anti['independent']['efficiencies'])} and "
              f"{', '.join(f'{e:.2f}' for e in anti['antithetic']['efficiencies'])}); "
              f"s/iter {anti['independent']['iteration_s']:.2f} -> {anti['antithetic']['iteration_s']:.2f}")
        for name in ("independent", "antithetic"):
            b = anti[name]["breakdown"]
            print(f"  {name}: per iteration {b['iteration_s']:.2f} s; per engine: generate {b['generate_s'] / args.engines:.2f} s, "
                  f"perturb {b['perturb_s'] / args.engines:.2f} s, update {b['update_s']:.2f} s, checksum {b['sync_s']:.2f} s")
    return rows


if __name__ == "__main__":
    main()
