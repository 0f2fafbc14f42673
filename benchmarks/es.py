"""ES throughput against pure inference and against the reference HF backend, in one run.

    make bench                                   # CPU: tiny and small (+ medium); writes bench/results.*
    python -m benchmarks.es --models tiny --scaling 16 --size_models   # tiny only, no medium
    python -m benchmarks.es --device cuda --engines 4 --models /models/Qwen2.5-0.5B-Instruct   # GPUs

Figures (medians over --iterations ES iterations, after one warm-up iteration):
1. ES efficiency: tokens/s of full ES iterations / tokens/s of plain vLLM `generate` on the same
   engines, same requests, same batch shapes (one member's prompts per call). Fixed-length outputs
   (ignore_eos) so both generate exactly the same number of tokens.
2. Batching headroom: the same ES tokens/s / plain vLLM generating all members' requests at once.
3. vLLM vs HF backend: seconds per ES iteration with realistic (variable-length) outputs.
4. Where the time goes: perturb, generate, update, sync, scoring, coordinator idle.
5. Scaling: iteration time vs population, engines and model size; efficiency vs rollout size.
6. Memory: peak resident memory per engine and of the coordinator, vs model weight bytes.
7. The noise cache (--noise_cache_mb): efficiency with every noise draw repeated, before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.es_report import markdown, plot
from benchmarks.provenance import stamp

OUT = Path("bench")
NOISE_CACHE_MB = 2048  # the engines' --noise_cache_mb here (and 0 for the before/after figure)


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a process (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def weight_bytes(model_path: str) -> int:
    return sum(p.stat().st_size for p in Path(model_path).glob("*.safetensors"))


class Bench:
    def __init__(self, iterations: int, prompts: int, max_tokens: int, device: str = "cpu"):
        from rewards.data import task_splits

        self.iterations, self.max_tokens, self.device = iterations, max_tokens, device
        self.samples = task_splits("conciseness", None, prompts, 0, 0)[0]

    def efficiency(self, pool, population: int, engines: int) -> dict:
        """ES tokens/s over plain vLLM tokens/s, same engines, same requests (fixed-length outputs)."""
        fixed = self.es_iterations(pool, self.config(population, engines, "vllm"), fixed_length=True)
        es_tps = statistics.median(r["tokens_per_s"] * r["time"]["rollout_s"] / r["time"]["iteration_s"] for r in fixed)
        plain = self.plain_generate(pool, population, all_at_once=False)
        return {"es_tokens_per_s": es_tps, "plain_tokens_per_s": plain, "efficiency": es_tps / plain,
                "breakdown": breakdown(fixed, engines), "tokens_per_member": len(self.samples) * self.max_tokens}

    def config(self, population: int, engines: int, engine: str):
        from esvllm.config import RunConfig

        return RunConfig(model_name="tiny", task="conciseness", population_size=population, num_engines=engines,
                         device=self.device, cuda_devices=",".join(map(str, range(engines))) if self.device == "cuda" else None,
                         sigma=0.01, alpha=0.005, max_tokens=self.max_tokens, data_sample=len(self.samples),
                         test_size=0, engine=engine, num_iterations=self.iterations + 1, max_model_len=256)

    def es_iterations(self, pool, config, fixed_length: bool) -> list[dict]:
        from engines.fleet import Fleet
        from esvllm.coordinator import Coordinator
        from esvllm.scoring import Scorer
        from engines.updatelog import UpdateLog

        fleet = Fleet(pool, UpdateLog())
        fleet.catch_up_all()
        coordinator = Coordinator(config, fleet, self.samples, Scorer("conciseness"), progress=False,
                                  sampling_overrides={"ignore_eos": True} if fixed_length else None)
        records = [coordinator.step(i) for i in range(config.num_iterations)]
        return records[1:]  # the first is warm-up

    def plain_generate(self, pool, population: int, all_at_once: bool, depth: int = 1) -> float:
        """tokens/s of vLLM generating the population's requests without ES, on the same engines.
        depth 2 queues the next call on an engine while one runs, as ES dispatch does (PIPELINE_DEPTH)."""
        import ray

        prompts = [s["prompt"] for s in self.samples]
        sampling = {"temperature": 0.0, "max_tokens": self.max_tokens, "ignore_eos": True}
        engines = pool.engines
        shares = [population // len(engines) + (i < population % len(engines)) for i in range(len(engines))]
        samples = []
        for _ in range(self.iterations):
            started = time.perf_counter()
            if all_at_once:
                refs = [e.submit("generate", prompts * n, sampling) for e, n in zip(engines, shares)]
                outs = [c for r in ray.get(refs) for c in r]
            else:  # one member's batch per call, engines in parallel, `depth` calls queued per engine
                outs, pending, left = [], {}, dict(enumerate(shares))
                for i, engine in enumerate(engines):
                    for _ in range(min(depth, left[i])):
                        pending[engine.submit("generate", prompts, sampling)] = i
                        left[i] -= 1
                while pending:
                    [ref], _ = ray.wait(list(pending), num_returns=1)
                    i = pending.pop(ref)
                    outs += ray.get(ref)
                    if left[i]:
                        pending[engines[i].submit("generate", prompts, sampling)] = i
                        left[i] -= 1
            samples.append(sum(c["tokens"] for c in outs) / (time.perf_counter() - started))
        return statistics.median(samples)


def breakdown(records: list[dict], engines: int) -> dict:
    """Median seconds per phase, and the share of engine time lost waiting on the coordinator."""
    med = lambda key: statistics.median(r["time"][key] for r in records)
    idle = []
    for r in records:
        t = r["time"]
        busy = t["perturb_s"] + t["generate_s"] + engines * (t["update_s"] + t["sync_s"])
        idle.append(1 - busy / (engines * t["iteration_s"]))
    return {"iteration_s": med("iteration_s"), "perturb_s": med("perturb_s"), "generate_s": med("generate_s"),
            "update_s": med("update_s"), "sync_s": med("sync_s"), "score_s": med("score_s"),
            "coordinator_idle": statistics.median(idle)}


def start_pool(bench: Bench, model: str, engines: int, backend: str = "vllm", noise_cache_mb: int = NOISE_CACHE_MB,
               lowrank_slots: int = 0):
    import dataclasses

    from engines.options import EngineOptions
    from engines.pool import EnginePool
    from esvllm.config import RunConfig
    from esvllm.models import resolve_model

    gpus = ",".join(map(str, range(engines))) if bench.device == "cuda" else None
    config = RunConfig(device=bench.device, cuda_devices=gpus, num_engines=engines, engine=backend, max_model_len=256,
                       noise_cache_mb=noise_cache_mb)
    options = dataclasses.replace(EngineOptions.from_config(config), lowrank_slots=lowrank_slots)
    return EnginePool.start(resolve_model(model), options)


def run_model(bench: Bench, model: str, population: int, engines: int, scaling_pops: list[int]) -> dict:
    from esvllm.models import resolve_model

    result = {"model": model, "weight_bytes": weight_bytes(resolve_model(model)), "population": population,
              "engines": engines}
    for backend in ("vllm", "hf"):
        pool = start_pool(bench, model, engines, backend)
        try:
            config = bench.config(population, engines, backend)
            realistic = bench.es_iterations(pool, config, fixed_length=False)
            result[f"{backend}_iteration_s"] = statistics.median(r["time"]["iteration_s"] for r in realistic)
            result[f"{backend}_engine_peak_rss"] = max(vm_hwm(e.info["pid"]) for e in pool.engines)
            if backend == "vllm":
                result.update(bench.efficiency(pool, population, engines))
                result["all_at_once_tokens_per_s"] = bench.plain_generate(pool, population, all_at_once=True)
                result["batching_headroom"] = result["es_tokens_per_s"] / result["all_at_once_tokens_per_s"]
                result["scaling"] = {}
                for n in scaling_pops:
                    recs = bench.es_iterations(pool, bench.config(n, engines, backend), fixed_length=False)
                    result["scaling"][n] = statistics.median(r["time"]["iteration_s"] for r in recs)
        finally:
            pool.shutdown()
    # Before/after of the noise cache: the same efficiency figure with every noise draw repeated.
    pool = start_pool(bench, model, engines, noise_cache_mb=0)
    try:
        result["without_noise_cache"] = bench.efficiency(pool, population, engines)
    finally:
        pool.shutdown()
    result["hf_over_vllm"] = result["hf_iteration_s"] / result["vllm_iteration_s"]
    print(json.dumps({k: v for k, v in result.items() if k != "scaling"}), file=sys.stderr, flush=True)
    return result


def efficiency_only(bench: Bench, model: str, population: int, engines: int) -> dict:
    """Efficiency, phases and engine memory of one model (for sizes where the full set takes too long)."""
    pool = start_pool(bench, model, engines)
    try:
        result = {"model": model, "population": population, "engines": engines,
                  "weight_bytes": weight_bytes(pool.model_path), **bench.efficiency(pool, population, engines),
                  "engine_peak_rss": max(vm_hwm(e.info["pid"]) for e in pool.engines)}
    finally:
        pool.shutdown()
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def engines_scaling(bench: Bench, model: str, population: int) -> dict:
    out = {}
    for engines in (1, 2):
        pool = start_pool(bench, model, engines)
        try:
            recs = bench.es_iterations(pool, bench.config(population, engines, "vllm"), fixed_length=False)
            out[engines] = statistics.median(r["time"]["iteration_s"] for r in recs)
        finally:
            pool.shutdown()
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small"])
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--engines", type=int, default=2, help="engines (one per GPU with --device cuda)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--prompts", type=int, default=16, help="prompts per member")
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per figure (after a warm-up)")
    parser.add_argument("--scaling", type=int, nargs="*", default=[8, 16, 32, 64])
    parser.add_argument("--size_models", nargs="*", default=["medium"],
                        help="larger models measured for efficiency, phases and memory only")
    parser.add_argument("--size_iterations", type=int, default=2)
    parser.add_argument("--long_shape", type=int, nargs=2, default=[64, 64], metavar=("PROMPTS", "TOKENS"),
                        help="a second, larger rollout per member for the efficiency of the last --models model")
    parser.add_argument("--long_population", type=int, default=4)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from engines.ray_node import init_ray

    init_ray(num_cpus=2 if args.device == "cpu" else None)
    bench = Bench(args.iterations, args.prompts, args.max_tokens, args.device)
    results = {**stamp(), "device": args.device,
               "settings": vars(args), "models": []}
    for model in args.models:
        scaling = args.scaling if model == args.models[0] else [n for n in args.scaling if n <= args.population]
        results["models"].append(run_model(bench, model, args.population, args.engines, scaling))
    results["engines_scaling_model"] = args.models[-1]
    results["engines_scaling"] = engines_scaling(bench, args.models[-1], args.population)
    long_bench = Bench(args.iterations, *args.long_shape, args.device)
    results["long_rollouts"] = efficiency_only(long_bench, args.models[-1], args.long_population, args.engines)
    size_bench = Bench(args.size_iterations, args.prompts, args.max_tokens, args.device)
    results["sizes"] = [efficiency_only(size_bench, m, args.population, args.engines) for m in args.size_models]
    results["coordinator_peak_rss"] = vm_hwm(os.getpid())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (out / "results.md").write_text(table + "\n")
    plot(results, out / "results.png")
    print(table)
    return results


if __name__ == "__main__":
    main()
