"""`make gpu-check`: everything the GPU path computes without vLLM, checked and timed on one GPU.

    python -m benchmarks.gpu_check --json bench/gpu_check.json        # needs torch and Triton only

Runs where vLLM, Ray and a package registry are missing (a bare GPU machine), in a few minutes:
1. the noise kernels (kernels.cuda): CUDA values equal the CPU definition bit for bit, whole
   and sliced; fused perturb and update against a float64 reference; draw speed against the
   device's copy bandwidth;
2. ESState on CUDA (Qwen2.5-shaped tensors, bf16 weights, fp32 master): perturb, an N=30 update and
   the checksum against float64 references and the CPU checksum, timed against bandwidth floors
   (benchmarks.kernels);
3. the memory plan's ES-state figure (esvllm.memory) against torch.cuda.max_memory_allocated;
4. the low-rank draw and merge (kernels.lowrank) on the 0.5B shapes;
5. the memory plan's other terms against the allocator: LoRA-shaped slot buffers (the 0.5B and 7B
   shapes, vLLM's layout), an Adam step on the largest 7B tensor and a rank-64 low-rank update of
   32 members; the ES options with bf16 weights and an fp32 master; a strided tensor refused;
6. the whole loop without Ray or vLLM (benchmarks.gpu_loop): three iterations of `esvllm.run --engine
   hf --in_process` on a Qwen2.5-0.5B-shaped bf16 checkpoint, checkpoint, resume bit for bit, export,
   `esvllm.eval` of the export.
Prints a summary table last and writes every figure to one JSON file.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from pathlib import Path

import torch

from benchmarks.gpu_loop import loop_in_a_new_process
from benchmarks.gpu_memory import memory_figure, plan_terms
from benchmarks.kernels import bench_size, copy_bandwidth, timed
from engines.es_state import ESState
from kernels.lowrank import combined_update, factors
from esvllm.model_shapes import QWEN25_SHAPES, qwen2_tensors
from kernels import TABLE_SHA256, fill_noise, fill_noise_rows, noise_reference, table_digest
from benchmarks.provenance import stamp


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    return float((got - want).norm() / want.norm())


def check_noise(device: str) -> dict:
    """CUDA noise == the CPU definition, bit for bit, for whole tensors and shards."""
    cases = {}
    whole = fill_noise(torch.empty(1 << 20, device=device), 12345, "model.embed_tokens.weight")
    cases["whole_1M"] = torch.equal(whole.cpu(), noise_reference(12345, "model.embed_tokens.weight",
                                                                 torch.arange(1 << 20)))
    rows = fill_noise_rows(torch.empty(37, 129, device=device), 7, "w", 11, 5, 300)
    index = (torch.arange(37)[:, None] + 11) * 300 + 5 + torch.arange(129)[None, :]
    cases["column_shard"] = torch.equal(rows.cpu(), noise_reference(7, "w", index))
    odd = fill_noise(torch.empty(1001, device=device), 3, "x", start=4095)
    cases["unaligned_slice"] = torch.equal(odd.cpu(), noise_reference(3, "x", torch.arange(4095, 5096)))
    return {"bit_identical": cases, "all_bit_identical": all(cases.values())}


def check_fused_kernels(device: str, shape: tuple[int, int] = (512, 1536)) -> dict:
    from kernels import philox_key
    from kernels.cuda import combine_rows, perturb_rows

    name = "model.layers.0.mlp.down_proj.weight"
    generator = torch.Generator(device=device).manual_seed(0)
    master = torch.randn(shape, device=device, generator=generator) * 0.02
    eps = noise_reference(5, name, torch.arange(shape[0] * shape[1])).view(shape).double()
    dst = torch.empty(shape, dtype=torch.bfloat16, device=device)
    perturb_rows(dst, master, philox_key(5, name), 1e-3, 0, 0, shape[1])
    want = master.double().cpu() + 1e-3 * eps
    pairs = [(100 + i, (-1) ** i * 1e-4 * (i + 1)) for i in range(30)]
    delta = torch.empty(shape, device=device)
    combine_rows(delta, [philox_key(s, name) for s, _ in pairs], [c for _, c in pairs], 0, 0, shape[1])
    want_delta = sum(c * noise_reference(s, name, torch.arange(shape[0] * shape[1])).view(shape).double()
                     for s, c in pairs)
    bf16_ulp_error = float(((dst.double().cpu() - want).abs() / want.abs().clamp_min(1e-30)).max())
    return {"perturb_bf16_max_relative_error": bf16_ulp_error, "perturb_within_one_bf16_ulp": bf16_ulp_error <= 2**-7,
            "update_relative_error": relative_error(delta, want_delta)}


def noise_speed(device: str, bandwidth: float) -> dict:
    """Our counter-based draw against torch's own normal_ (the draw the engines used before)."""
    n = 1 << 28
    out = torch.empty(n, device=device)
    seconds = timed(lambda: fill_noise(out, 1, "speed"), device, 5)
    generator = torch.Generator(device=device).manual_seed(1)
    torch_seconds = timed(lambda: out.normal_(generator=generator), device, 5)
    floor = 4 * n / bandwidth
    return {"elements": n, "seconds": seconds, "gelements_per_s": n / seconds / 1e9, "write_floor_s": floor,
            "over_floor": seconds / floor, "torch_normal_seconds": torch_seconds}


def checksum_agrees(device: str) -> dict:
    generator = torch.Generator().manual_seed(1)
    master = {n: torch.randn(s, generator=generator) for n, s in qwen2_tensors("toy").items()}
    sums = []
    for tensors in ({n: t.clone() for n, t in master.items()}, {n: t.to(device) for n, t in master.items()}):
        state = ESState(tensors, lambda write: None, None, read_all=lambda read, t=tensors: [read(n, v) for n, v in t.items()])
        sums.append(state.checksum())  # served (here the same tensors) and master, through each device's kernels
    return {"cpu_equals_cuda": sums[0] == sums[1]}


def lowrank_figures(device: str, population: int = 30) -> dict:
    shapes = {n: s for n, s in qwen2_tensors("0.5B").items() if len(s) == 2 and "embed" not in n}
    out = {}
    for rank in (1, 4):
        draw = timed(lambda: [factors(7, n, s, rank, device) for n, s in shapes.items()], device, 3)
        pairs = [(100 + i, 1e-4) for i in range(population)]
        merge = timed(lambda: [combined_update(pairs, n, s, rank, device) for n, s in shapes.items()], device, 1)
        out[f"rank{rank}"] = {"draw_one_member_s": draw, "merge_population_s": merge}
    name, s = "model.layers.0.mlp.up_proj.weight", shapes["model.layers.0.mlp.up_proj.weight"]
    a, b = factors(3, name, s, 4, device)
    merged = combined_update([(3, 0.5)], name, s, 4, device)
    out["merge_relative_error"] = relative_error(merged, 0.5 * (a.double() @ b.double().t()) / 2)
    return out


def options_on_cuda(device: str) -> dict:
    """The ES options' CUDA paths against the same ES state on CPU: mirrored perturbation, Adam,
    low-rank update, correlated noise."""
    shapes = {"model.layers.0.mlp.up_proj.weight": (256, 128), "model.layers.0.mlp.gate_proj.weight": (256, 128),
              "model.norm.weight": (128,)}
    generator = torch.Generator().manual_seed(2)
    base = {n: torch.randn(sh, generator=generator) * 0.02 for n, sh in shapes.items()}

    def state(dev, mode="iid"):
        master = {n: t.clone().to(dev) for n, t in base.items()}
        weights = {n: torch.empty_like(t) for n, t in master.items()}

        def write_all(write):
            for n, t in master.items():
                write(n, t, weights[n])

        return ESState(master, write_all, None, noise_mode=mode), master, weights

    out = {}
    gpu, _, gpu_weights = state(device)
    gpu.perturb(9, 0.01, -1)
    out["mirror_relative_error"] = max(relative_error(gpu_weights[n], base[n] - 0.01 * noise_reference(
        9, n, torch.arange(base[n].numel())).view(base[n].shape)) for n in shapes)
    cpu, cpu_master, _ = state("cpu")
    gpu, gpu_master, _ = state(device)
    for t in (1, 2, 3):
        options = {"optimizer": "adam", "alpha": 1e-3, "step": t}
        for es in (cpu, gpu):
            es.apply_update([(100 + t, 0.3), (200 + t, -0.1)], options)
    out["adam_relative_error"] = max(relative_error(gpu_master[n], cpu_master[n]) for n in shapes)
    for es in (cpu, gpu):
        es.apply_update([(7, 0.2), (8, -0.05)], {"perturbation": "lowrank", "rank": 4})
    out["lowrank_update_relative_error"] = max(relative_error(gpu_master[n], cpu_master[n]) for n in shapes)
    correlated, _, weights = state(device, "paper_correlated")
    correlated.perturb(5, 0.01)
    up, gate = (weights[n] - base[n].to(device) for n in list(shapes)[:2])
    out["correlated_same_shape_identical"] = bool(torch.allclose(up, gate, atol=1e-6))
    return out


def options_with_bf16_weights(device: str) -> dict:
    """Each ES option with bf16 model weights written from an fp32 master: perturb within one bf16
    rounding of master + sigma * eps, restore exactly the master in bf16, the master after an update
    equal to the same update on CPU."""
    shapes = {"model.layers.0.mlp.up_proj.weight": (256, 128), "model.norm.weight": (128,)}
    generator = torch.Generator().manual_seed(3)
    base = {n: torch.randn(sh, generator=generator) * 0.02 for n, sh in shapes.items()}

    def state(dev):
        master = {n: t.clone().to(dev) for n, t in base.items()}
        weights = {n: torch.empty(t.shape, dtype=torch.bfloat16, device=dev) for n, t in master.items()}
        return ESState(master, lambda write: [write(n, t, weights[n]) for n, t in master.items()], None,
                       read_all=lambda read: [read(n, weights[n]) for n in master]), master, weights

    out = {}
    for name, options in (("sgd", {}), ("adam", {"optimizer": "adam", "alpha": 1e-3, "step": 1}),
                          ("lowrank", {"perturbation": "lowrank", "rank": 4})):
        gpu, gpu_master, gpu_weights = state(device)
        cpu, cpu_master, _ = state("cpu")
        gpu.perturb(9, 0.01)
        exact = {n: (base[n].double() + 0.01 * noise_reference(9, n, torch.arange(base[n].numel())).view(
            base[n].shape).double()) for n in shapes}
        ulp = max(float(((gpu_weights[n].double().cpu() - exact[n]).abs() / exact[n].abs().clamp_min(1e-30)).max())
                  for n in shapes)
        checksums_agree = gpu.restore() == cpu.restore()  # served bf16 weights and masters, CUDA vs CPU kernels
        restored = all(torch.equal(gpu_weights[n].cpu(), base[n].to(torch.bfloat16)) for n in shapes)
        for es in (gpu, cpu):
            es.apply_update([(11, 0.3), (12, -0.2)], options)
        out[name] = {"perturb_max_relative_error": ulp, "perturb_within_one_bf16_rounding": ulp <= 2**-8,
                     "restore_exact": restored, "restore_checksums_equal_cpu": checksums_agree,
                     "update_relative_error": max(relative_error(gpu_master[n], cpu_master[n]) for n in shapes)}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["0.5B", "3B", "7B"], choices=list(QWEN25_SHAPES))
    parser.add_argument("--memory_sizes", nargs="+", default=["0.5B", "3B"], choices=list(QWEN25_SHAPES))
    parser.add_argument("--json", default="bench/gpu_check.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("no CUDA GPU visible to torch")
    import triton

    device = "cuda"
    started = time.perf_counter()
    props = torch.cuda.get_device_properties(0)
    results = {**stamp(), "gpu": props.name, "sm_count": props.multi_processor_count,
               "gpu_memory_gb": props.total_memory / 1e9, "torch": torch.__version__, "triton": triton.__version__,
               "python": platform.python_version(), "table_digest_ok": table_digest() == TABLE_SHA256, "errors": {}}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)

    def section(name, fn):
        """One part of the check; a failure is recorded and the rest still runs."""
        print(f"[{time.perf_counter() - started:6.1f}s] {name} ...", flush=True)
        try:
            results[name] = fn()
        except Exception:  # keep going: a lease is too short to lose the other figures
            results["errors"][name] = traceback.format_exc()
            print(results["errors"][name], flush=True)
        out.write_text(json.dumps(results, indent=2))

    section("bandwidth", lambda: copy_bandwidth(device, 10))
    section("noise", lambda: check_noise(device))
    section("fused", lambda: check_fused_kernels(device))
    section("noise_speed", lambda: noise_speed(device, results["bandwidth"]))
    section("checksum", lambda: checksum_agrees(device))
    section("kernels", lambda: [bench_size(size, device, "bfloat16", 30, 5, results["bandwidth"])
                                for size in args.sizes])
    section("memory", lambda: [memory_figure(size, device) for size in args.memory_sizes])
    section("lowrank", lambda: lowrank_figures(device))
    section("options", lambda: options_on_cuda(device))
    section("options_bf16", lambda: options_with_bf16_weights(device))
    section("plan_terms", lambda: plan_terms(device))
    section("loop", lambda: loop_in_a_new_process(device))
    results["seconds"] = time.perf_counter() - started
    out.write_text(json.dumps(results, indent=2))
    print(summary(results))
    return results


def summary(r: dict) -> str:
    if r["errors"]:
        return "errors in: " + ", ".join(r["errors"]) + "\n" + json.dumps({k: v for k, v in r.items() if k != "errors"})[:3000]
    lines = [f"{r['gpu']} ({r['sm_count']} SMs), torch {r['torch']}, triton {r['triton']}, {r['date']}; "
             f"copy bandwidth {r['bandwidth'] / 1e12:.2f} TB/s (read + write)",
             f"noise bit-identical to the CPU definition: {r['noise']['all_bit_identical']} {r['noise']['bit_identical']}; "
             f"table ok: {r['table_digest_ok']}; checksum CPU == CUDA: {r['checksum']['cpu_equals_cuda']}",
             f"fused perturb within one bf16 ulp: {r['fused']['perturb_within_one_bf16_ulp']}; "
             f"update vs float64: {r['fused']['update_relative_error']:.2e}",
             f"noise draw: {r['noise_speed']['gelements_per_s']:.1f} G elements/s, "
             f"{r['noise_speed']['over_floor']:.2f}x the write floor (torch normal_: "
             f"{r['noise_speed']['torch_normal_seconds'] / r['noise_speed']['seconds']:.2f}x our time)",
             "| size | params | noise ms (x floor) | perturb ms (x floor) | update N=30 ms (x floor) |", "|---|---|---|---|---|"]
    for k in r["kernels"]:
        lines.append(f"| {k['size']} | {k['parameters'] / 1e9:.2f}B | {k['noise_s'] * 1e3:.1f} ({k['noise_over_floor']:.2f}) | "
                     f"{k['perturb_s'] * 1e3:.1f} ({k['perturb_over_floor']:.2f}) | "
                     f"{k['update_s'] * 1e3:.0f} ({k['update_over_floor']:.2f}) |")
    for m in r["memory"]:
        lines.append(f"memory {m['size']}: ES state measured {m['measured_bytes'] / 2**30:.2f} GiB, "
                     f"planned {m['planned_without_export_copy'] / 2**30:.2f} GiB (+ export copy: "
                     f"{m['planned_bytes'] / 2**30:.2f}), ratio {m['measured_over_planned']:.3f}")
    low = r["lowrank"]
    lines.append("low-rank 0.5B: " + ", ".join(
        f"r={k[4:]}: draw {v['draw_one_member_s'] * 1e3:.1f} ms/member, merge N=30 {v['merge_population_s'] * 1e3:.0f} ms"
        for k, v in low.items() if k.startswith("rank")) + f"; merge error {low['merge_relative_error']:.1e}")
    o = r["options"]
    lines.append(f"options on CUDA vs CPU: mirror {o['mirror_relative_error']:.1e}, Adam {o['adam_relative_error']:.1e}, "
                 f"low-rank update {o['lowrank_update_relative_error']:.1e}, correlated noise same-shape identical "
                 f"{o['correlated_same_shape_identical']}")
    for name, v in r["options_bf16"].items():
        lines.append(f"{name} with bf16 weights: perturb within one bf16 rounding {v['perturb_within_one_bf16_rounding']}, "
                     f"restore exact {v['restore_exact']}, checksums = CPU {v['restore_checksums_equal_cpu']}, update vs CPU {v['update_relative_error']:.1e}")
    for name, v in r["plan_terms"].items():
        if isinstance(v, dict):
            lines.append(f"plan {name}: planned {v['planned_bytes'] / 1e9:.2f} GB, allocated {v['measured_bytes'] / 1e9:.2f} GB")
    lines.append(f"strided tensor refused by the Triton kernels: {r['plan_terms']['strided_refused']}")
    loop = r["loop"]
    lines.append(f"loop (--engine hf --in_process, 0.5B shape, {'/'.join(loop['final_dtypes'])}): {loop['iterations']} "
                 f"iterations in {loop['seconds_first_run']:.0f} s, checkpoints {len(loop['checkpoints'])}, resumed "
                 f"metrics equal {loop['resumed_metrics_equal']}, weights bit-identical "
                 f"{loop['resumed_weights_bit_identical']}, {loop['tensors_changed']}/{loop['tensors']} tensors moved, "
                 f"eval of final/ = in-loop eval {loop['eval_equals_in_loop_eval']}")
    lines.append(f"total {r['seconds']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
