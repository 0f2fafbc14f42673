"""Engine benchmark: ES verbs against the floors they are held to, side by side in one run.

    make bench-engine            # tiny and small built-in models, CPU
    python -m benchmarks.engine --models small --population 30 --reps 5

For each model, in a fresh process with one in-process vLLM engine, it times (median of --reps):
perturb, restore and apply_update(N) in the worker; one plain copy of all weights; drawing the same
number of normal samples with `Tensor.normal_` into a preallocated buffer. It also measures the
resident memory the ES state adds to the plain engine, as a ratio to the model's weight bytes.
Targets: perturb <= 1.5x (copy + randn), restore <= 1.5x copy, apply_update <= 1.5x N x randn, added
memory <= master + 2 x largest tensor. Prints a markdown table; `--json FILE` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def time_verbs(worker, population: int, reps: int) -> dict:
    """Runs inside the vLLM worker (passed to collective_rpc as a callable)."""
    import torch

    from kernels import fill_noise

    masters = list(worker.es_state.tensors().items())
    total = sum(m.numel() for _, m in masters)
    dtype = next(p.dtype for p in worker.model_runner.model.parameters() if p.numel())
    copy_dst = torch.empty(total, dtype=dtype)
    randn_dst = torch.empty(total, dtype=torch.float32)

    def plain_copy():
        offset = 0
        for _, m in masters:
            copy_dst[offset : offset + m.numel()].copy_(m.view(-1))
            offset += m.numel()

    def randn_fill():
        offset = 0
        for name, m in masters:
            fill_noise(randn_dst[offset : offset + m.numel()], 1, name)
            offset += m.numel()

    def median_s(fn) -> float:
        fn()  # warm-up
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    pairs = [(1000 + i, 1e-6 * (-1) ** i) for i in range(population)]
    figures = {
        "copy_s": median_s(plain_copy),
        "randn_s": median_s(randn_fill),
        "perturb_s": median_s(lambda: worker.perturb(7, 1e-3)),
        "restore_s": median_s(worker.restore),
        "apply_update_s": median_s(lambda: worker.apply_update(pairs)),
    }
    largest = max(m.numel() for _, m in masters)
    figures.update(parameters=total, weight_bytes=total * torch.tensor([], dtype=dtype).element_size(),
                   master_bytes=sum(m.numel() * m.element_size() for _, m in masters),
                   largest_tensor_bytes=largest * 4)
    return figures


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim_heap() -> None:
    """Hand freed heap pages back to the OS, so the baseline holds only live memory."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure_one(model: str, population: int, reps: int, dtype: str) -> dict:
    """One model in this process: plain engine RSS, then ES state RSS, then the timings."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from vllm import LLM

    from esvllm.models import resolve_model

    path = resolve_model(model)
    llm = LLM(model=path, worker_extension_cls="engines.vllm_worker.ESWorkerExtension", dtype=dtype,
              enforce_eager=True, gpu_memory_utilization=0.1, kv_cache_memory_bytes=64 * 2**20,
              max_model_len=256, enable_prefix_caching=False)
    trim_heap()
    plain_rss = rss_bytes()
    llm.collective_rpc("es_init")
    for seed in range(5):  # steady state: re-packing has freed and reallocated every kernel
        llm.collective_rpc("perturb", args=(seed, 1e-3))
    held_rss = rss_bytes()  # includes freed kernels glibc keeps for reuse
    trim_heap()
    es_rss = rss_bytes()  # live memory only
    figures = llm.collective_rpc(time_verbs, args=(population, reps))[0]
    figures.update(model=model, dtype=dtype, population=population, added_rss_bytes=es_rss - plain_rss,
                   added_rss_untrimmed_bytes=held_rss - plain_rss)
    return figures


def ratios(f: dict) -> dict:
    return {
        "perturb / (copy + randn)": f["perturb_s"] / (f["copy_s"] + f["randn_s"]),
        "restore / copy": f["restore_s"] / f["copy_s"],
        "apply_update / (N x randn)": f["apply_update_s"] / (f["population"] * f["randn_s"]),
        "added memory / weights": f["added_rss_bytes"] / f["weight_bytes"],
        "added memory incl. allocator cache / weights": f["added_rss_untrimmed_bytes"] / f["weight_bytes"],
        "allowed memory / weights": (f["master_bytes"] + 2 * f["largest_tensor_bytes"]) / f["weight_bytes"],
    }


def table(results: list[dict]) -> str:
    head = ("| model | params | perturb ms | restore ms | apply_update(N) ms | copy ms | randn ms | "
            "perturb/(copy+randn) | restore/copy | update/(N·randn) | added mem / weights: live (allowed), "
            "with allocator cache |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for f in results:
        r = ratios(f)
        lines.append(
            f"| {f['model']} | {f['parameters'] / 1e6:.2f}M | {f['perturb_s'] * 1e3:.1f} | "
            f"{f['restore_s'] * 1e3:.1f} | {f['apply_update_s'] * 1e3:.1f} (N={f['population']}) | "
            f"{f['copy_s'] * 1e3:.2f} | {f['randn_s'] * 1e3:.1f} | {r['perturb / (copy + randn)']:.2f} (≤1.5) | "
            f"{r['restore / copy']:.2f} (≤1.5) | {r['apply_update / (N x randn)']:.2f} (≤1.5) | "
            f"{r['added memory / weights']:.2f} ({r['allowed memory / weights']:.2f}), "
            f"{r['added memory incl. allocator cache / weights']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small"], help="built-in names or HF paths")
    parser.add_argument("--population", type=int, default=30, help="N seeds per apply_update")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--dtype", default="float32", help="engine dtype")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure this model, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print("BENCH " + json.dumps(measure_one(args.one, args.population, args.reps, args.dtype)))
        return
    results = []
    for model in args.models:  # a fresh process per model: clean memory figures
        print(f"measuring {model} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, "-m", "benchmarks.engine", "--one", model, "--population",
                              str(args.population), "--reps", str(args.reps), "--dtype", args.dtype],
                             capture_output=True, text=True)
        line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH ")), None)
        if line is None:
            sys.exit(f"benchmark of {model} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(line[6:]))
    print(table(results))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
