"""Time the ES kernels (noise draw, perturb, update) on Qwen2.5-shaped tensors against memory bandwidth.

    python -m benchmarks.kernels --device cuda --sizes 0.5B 1.5B 7B   # on a GPU machine (torch only)
    python -m benchmarks.kernels --device cpu --sizes toy             # a quick run anywhere

No vLLM: the tensors are allocated with the shapes of the named model and driven through the same
`engines.es_state.ESState` the engines use (fp32 master, model weights in --dtype), so the figures
are those of the engines' own code on that device. The floor of each verb is the bytes it must move
at the copy bandwidth measured in the same run:
- noise: write 4 bytes per parameter (the fp32 noise buffer);
- perturb: read the fp32 master, write the model weight (4 + model bytes per parameter);
- update of N members: read and write the master once and write the model (8 + model bytes per
  parameter), the floor if the noise never left registers; the engines materialise each member's
  noise, so N noise writes are also shown as a second, reachable floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from esvllm.model_shapes import QWEN25_SHAPES as SHAPES  # noqa: F401 (the sizes on offer)
from esvllm.model_shapes import qwen2_tensors
from benchmarks.provenance import stamp


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after one warm-up, synchronising the device."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def copy_bandwidth(device: str, repeats: int, n: int = 256 * 2**20) -> float:
    """Bytes per second of one large device-to-device copy of n floats (read + write counted)."""
    import torch

    src, dst = torch.ones(n, device=device), torch.empty(n, device=device)
    seconds = timed(lambda: dst.copy_(src), device, repeats)
    return 2 * 4 * n / seconds


def bench_size(size: str, device: str, dtype: str, population: int, repeats: int, bandwidth: float) -> dict:
    import torch

    from engines.es_state import ESState
    from kernels import fill_noise

    shapes = qwen2_tensors(size)
    model_dtype = getattr(torch, dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    master = {n: torch.randn(s, device=device, generator=generator).mul_(0.02) for n, s in shapes.items()}
    model = {n: torch.empty(s, device=device, dtype=model_dtype) for n, s in shapes.items()}

    def write_all(write):
        for name, tensor in master.items():
            write(name, tensor, model[name])

    es = ESState(master, write_all, None, noise_cache_bytes=0)
    params = sum(t.numel() for t in master.values())
    elt = torch.empty(0, dtype=model_dtype).element_size()

    # The timed code must compute the right thing: one tensor read back against base + sigma * eps.
    name = "model.layers.0.mlp.down_proj.weight"
    es.perturb(7, 1e-3)
    expected = (master[name] + 1e-3 * fill_noise(torch.empty_like(master[name]), 7, name)).to(model_dtype)
    torch.testing.assert_close(model[name], expected, rtol=1e-2, atol=1e-6)

    largest = torch.empty(max(t.numel() for t in master.values()), device=device)
    noise_s = timed(lambda: [fill_noise(largest[: t.numel()].view(t.shape), 3, n) for n, t in master.items()],
                    device, repeats)
    # Before the counter-based noise: one torch.Generator per tensor, seeded, then normal_.
    def torch_noise():
        for i, t in enumerate(master.values()):
            largest[: t.numel()].normal_(generator=torch.Generator(device=device).manual_seed(i))

    torch_noise_s = timed(torch_noise, device, repeats)
    one_thread = {}
    if device == "cpu":  # an engine on CPU has one core: the per-core speed is the one ES sees
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            one_thread = {"noise_1thread_s": timed(lambda: [fill_noise(largest[: t.numel()].view(t.shape), 3, n)
                                                            for n, t in master.items()], device, repeats),
                          "torch_generator_noise_1thread_s": timed(torch_noise, device, repeats)}
        finally:
            torch.set_num_threads(threads)
    perturb_s = timed(lambda: es.perturb(11, 1e-3), device, repeats)
    pairs = [(1000 + i, 1e-6 * (-1) ** i) for i in range(population)]
    update_s = timed(lambda: es.apply_update(pairs), device, max(1, repeats // 3))
    floors = {
        "noise": 4 * params / bandwidth,
        "perturb": (4 + elt) * params / bandwidth,
        "update": (8 + elt) * params / bandwidth,
        "update_materialised": (8 + elt + 4 * population) * params / bandwidth,
    }
    return {
        "size": size, "parameters": params, "dtype": dtype, "population": population,
        "noise_s": noise_s, "torch_generator_noise_s": torch_noise_s, "perturb_s": perturb_s, "update_s": update_s,
        "floor_s": floors,
        "noise_over_floor": noise_s / floors["noise"],
        "perturb_over_floor": perturb_s / floors["perturb"],
        "update_over_floor": update_s / floors["update"],
        "update_over_materialised_floor": update_s / floors["update_materialised"],
        "noise_gelems_per_s": params / noise_s / 1e9,
        **one_thread,
    }


def level_speeds(repeats: int, elements: int = 2**22) -> dict[str, float]:
    """Nanoseconds per value of one thread drawing `elements` noise values with each CPU kernel
    level this processor runs and with the torch reference, side by side."""
    import torch

    from kernels import cpu, cpu_lib, philox_key
    from kernels.definition import noise_reference_from_key

    out = torch.empty(1, elements)
    key = philox_key(3, "model.layers.0.mlp.down_proj.weight")
    compiler = cpu_lib.find_compiler()
    libs = {level: cpu_lib.build(compiler, level) for level in cpu_lib.supported_levels(compiler)} if compiler else {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        speeds = {level: timed(lambda lib=lib: cpu_lib.fill_rows(out, key, 0, 0, elements, lib=lib), "cpu", repeats)
                  for level, lib in libs.items()}
        small = torch.empty(1, elements // 16)  # the reference is slow: a sixteenth, scaled
        speeds[cpu.REFERENCE] = 16 * timed(lambda: small.copy_(noise_reference_from_key(
            key, torch.arange(elements // 16)).view(1, -1)), "cpu", max(1, repeats // 2))
    finally:
        torch.set_num_threads(threads)
    return {level: seconds / elements * 1e9 for level, seconds in speeds.items()}


def markdown(results: dict) -> str:
    lines = [f"{results['device_name']}, {results['date']}, copy bandwidth {results['bandwidth'] / 1e9:.0f} GB/s "
             f"(read + write), model dtype {results['dtype']}, fp32 master, N={results['population']}:", "",
             "| size | params | noise ms (x floor) | torch.Generator normal_ ms | perturb ms (x floor) | update(N) ms (x floor; x floor with N noise writes) |",
             "|---|---|---|---|---|---|"]
    for r in results["sizes"]:
        lines.append(f"| {r['size']} | {r['parameters'] / 1e6:.1f}M | {r['noise_s'] * 1e3:.1f} ({r['noise_over_floor']:.2f}) | "
                     f"{r['torch_generator_noise_s'] * 1e3:.1f} | "
                     f"{r['perturb_s'] * 1e3:.1f} ({r['perturb_over_floor']:.2f}) | {r['update_s'] * 1e3:.0f} "
                     f"({r['update_over_floor']:.1f}; {r['update_over_materialised_floor']:.2f}) |")
    for r in results["sizes"]:
        if "noise_1thread_s" in r:
            lines.append(f"\n{r['size']}, one thread: counter-based noise {r['noise_1thread_s'] * 1e3:.1f} ms, "
                         f"torch.Generator normal_ {r['torch_generator_noise_1thread_s'] * 1e3:.1f} ms")
    if results.get("cpu_levels"):
        lines.append(f"\nCPU kernel levels on {results['cpu']}, one thread, ns per value (the level in use: "
                     f"{results['cpu_level_in_use']}): "
                     + ", ".join(f"{level} {ns:.2f}" for level, ns in results["cpu_levels"].items()))
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--sizes", nargs="+", default=["0.5B", "1.5B", "7B"], choices=list(SHAPES))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--population", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--copy_elements", type=int, default=256 * 2**20,
                        help="floats copied to measure the bandwidth (two buffers of this size)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    bandwidth = copy_bandwidth(args.device, args.repeats, args.copy_elements)
    results = {
        **stamp(), "device": args.device, "dtype": args.dtype, "population": args.population,
        "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads",
        "bandwidth": bandwidth, "sizes": [],
    }
    if args.device == "cpu":
        from kernels import cpu, cpu_lib

        results.update(cpu=cpu_lib.cpu_model(), cpu_level_in_use=cpu.level(),
                       cpu_levels=level_speeds(args.repeats))
    for size in args.sizes:
        results["sizes"].append(bench_size(size, args.device, args.dtype, args.population, args.repeats, bandwidth))
        if args.device == "cuda":
            torch.cuda.empty_cache()
    print(markdown(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
