"""The whole training loop where Ray and vLLM are missing: `make gpu-check`'s last section.

    python -m benchmarks.gpu_loop --device cuda --out /tmp/loop      # a Qwen2.5-0.5B-shaped model, bf16

Three iterations of `python -m esvllm.run --engine hf --in_process` (one engine in this process, no
Ray) with a checkpoint every iteration; the same run stopped after two and resumed must end with
the same metrics and the same final weights, bit for bit; `final/` is then evaluated by
`python -m esvllm.eval --in_process` and must score what the run's own last evaluation scored.
On CPU (tests/unit/test_in_process.py) the same check runs with the built-in tiny model, with Ray and
vLLM made unimportable.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

ITERATIONS = 3


def qwen25_shaped_checkpoint(size: str, path: Path) -> str:
    """Random bf16 weights of the Qwen2.5-`size` shapes with the character tokenizer, every id of the
    vocabulary decoding to text (the random model's choices differ between members, and so do rewards)."""
    from esvllm.model_shapes import qwen25_config, write_qwen25_shaped
    from esvllm.models import build_tokenizer

    write_qwen25_shaped(size, path, weights=True, dtype="bfloat16")
    build_tokenizer(qwen25_config(size)["vocab_size"]).save_pretrained(path)
    return str(path)


def run_args(model: str, device: str) -> list[str]:
    args = ["--model_name", model, "--task", "conciseness", "--engine", "hf", "--in_process",
            "--population_size", "4", "--sigma", "0.05", "--alpha", "0.01", "--data_sample", "6",
            "--test_size", "4", "--max_tokens", "8", "--max_model_len", "256", "--global_seed", "3",
            "--save_every", "1", "--keep_checkpoints", "5", "--eval_every", str(ITERATIONS), "--device", device]
    return args + (["--cuda_devices", "0"] if device == "cuda" else [])


def check_loop(model: str, device: str, workdir: Path) -> dict:
    """Run, stop-and-resume, export and evaluate; returns the figures and what held."""
    import torch

    from esvllm.eval import main as evaluate
    from esvllm.run import main as train
    from esvllm.runlog import read_metrics

    workdir = Path(workdir)
    args = run_args(model, device)
    started = time.perf_counter()
    whole = train(args + ["--num_iterations", str(ITERATIONS), "--output_dir", str(workdir / "whole")])
    seconds = time.perf_counter() - started
    stopped = train(args + ["--num_iterations", str(ITERATIONS - 1), "--output_dir", str(workdir / "stopped")])
    shutil.rmtree(stopped / "final")
    resumed = train(["--resume", str(stopped), "--num_iterations", str(ITERATIONS)])
    summary = evaluate(["--model", str(whole / "final"), "--task", "conciseness", "--engine", "hf", "--in_process",
                        "--device", device, "--data_sample", "6", "--test_size", "4", "--global_seed", "3",
                        "--max_tokens", "8", "--max_model_len", "256", "--output", str(workdir / "eval.jsonl")]
                       + (["--cuda_devices", "0"] if device == "cuda" else []))

    def volatile_free(run_dir):
        return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s", "engines")}
                for r in read_metrics(run_dir)]

    a, b = load_files(whole / "final"), load_files(resumed / "final")
    base = load_files(Path(model))
    in_loop = json.loads((whole / "eval.jsonl").read_text().splitlines()[-1])
    return {
        "device": device, "iterations": ITERATIONS, "seconds_first_run": seconds,
        "checkpoints": sorted(p.name for p in (whole / "checkpoints").iterdir()),
        "resumed_metrics_equal": volatile_free(resumed) == volatile_free(whole),
        "resumed_weights_bit_identical": a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),
        "final_dtypes": sorted({str(t.dtype) for t in a.values()}),
        "tensors_changed": sum(not torch.equal(a[k], base[k]) for k in a if k in base),
        "tensors": len(a),
        "eval_reward": summary["reward"], "in_loop_eval_reward": in_loop["reward"],
        "eval_equals_in_loop_eval": summary["reward"] == in_loop["reward"],
    }


def load_files(directory: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def loop_in_a_new_process(device: str, size: str = "0.5B") -> dict:
    """This check as a user runs it: its own process, where CUDA starts with the run (this
    one has used the GPU already, so --cuda_devices could no longer choose it)."""
    import subprocess
    import sys
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="esvllm-gpu-loop-"))
    result = workdir / "result.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_loop", "--device", device, "--size", size,
                           "--out", str(workdir / "run"), "--json", str(result)], capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.gpu_loop exited {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(result.read_text())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", default="0.5B", help="Qwen2.5 shape of the random checkpoint")
    parser.add_argument("--out", default="/tmp/esvllm-gpu-loop")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    workdir = Path(args.out)
    shutil.rmtree(workdir, ignore_errors=True)
    model = qwen25_shaped_checkpoint(args.size, workdir / f"qwen2.5-{args.size}")
    result = check_loop(model, args.device, workdir)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
