"""Countdown (the paper's main task) on a Hub model, four GPUs, from Python.

    python examples/countdown_gpu.py                                  # Qwen2.5-3B-Instruct on GPUs 0-3
    python examples/countdown_gpu.py --dry_run --gpu_memory_gb 80     # the plan only, on any machine
    python examples/countdown_gpu.py --model /models/Qwen2.5-7B-Instruct --cuda_devices 4,5,6,7

The settings are the paper's (experiments/countdown.toml): N=30, sigma=0.001, alpha=0.0005, 200
training problems, greedy decoding, a held-out evaluation every 50 iterations.
"""

import argparse
import json

import esvllm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen2.5-3B-Instruct")
    parser.add_argument("--cuda_devices", default="0,1,2,3")
    parser.add_argument("--dry_run", action="store_true", help="validate and print the memory plan; start nothing")
    parser.add_argument("--gpu_memory_gb", type=float, help="plan for this GPU memory (a dry run without the GPU)")
    parser.add_argument("--output_dir", default="runs")
    args = parser.parse_args(argv)
    return esvllm.train(model=args.model, experiment="countdown", cuda_devices=args.cuda_devices,
                        dry_run=args.dry_run, gpu_memory_gb=args.gpu_memory_gb,
                        output_dir=args.output_dir)


if __name__ == "__main__":
    result = main()
    if isinstance(result, dict):  # the dry run's plan
        print("fits" if result["fits"] else "does not fit: see the plan above")
    else:
        print(json.dumps(result.evaluations[-1]) if result.evaluations else result.run_dir)
