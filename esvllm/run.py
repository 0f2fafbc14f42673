"""ES fine-tuning from the command line.

    python -m esvllm.run --experiment demo                      # CPU, built-in model
    python -m esvllm.run --experiment countdown --cuda_devices 0,1,2,3 --model_name /models/Qwen2.5-3B-Instruct
    python -m esvllm.run --help                                 # instant: imports no torch, vllm or ray

Flags override the experiment file (experiments/NAME.toml), which overrides the defaults. Everything
is validated before Ray or any engine starts. The run directory
<output_dir>/<experiment>__<model>__<seed>__<time>/ gets config.json, metrics.jsonl, TensorBoard events
and the final model in HF format (final/).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from esvllm.config import RunConfig, check_environment, load_experiment

ALIASES = {"output_dir": ["--experiment_dir"], "model_name": ["--model"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m esvllm.run", description="Fine-tune an LLM with ES on vLLM engines.",
                                     argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(RunConfig):
        flags = [f"--{f.name}", *ALIASES.get(f.name, [])]
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if f.type in (bool, "bool"):
            parser.add_argument(*flags, dest=f.name, action="store_true", help=help_text)
        else:
            parser.add_argument(*flags, dest=f.name, type=_parser_type(f), help=help_text, metavar=f.name.upper())
    return parser


def _parser_type(f: dataclasses.Field):
    kind = str(f.type)
    if "int" in kind:
        return int
    if "float" in kind:
        return float
    return str


def resolve_config(argv: list[str] | None = None) -> RunConfig:
    args = vars(build_parser().parse_args(argv))
    settings = load_experiment(args["experiment"]) if "experiment" in args else {}
    settings.update(args)
    return RunConfig(**settings)


def main(argv: list[str] | None = None) -> Path:
    try:
        config = resolve_config(argv)
        check_environment(config)
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    logging.basicConfig(level=logging.INFO if config.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return train(config)


def train(config: RunConfig) -> Path:
    """Start the engines, run every iteration, export final/, stop the engines."""
    from engines.pool import EngineOptions, EnginePool, init_ray
    from esvllm.coordinator import Coordinator
    from esvllm.models import resolve_model
    from esvllm.runlog import RunLog, run_dir_name
    from rewards import resolve_reward
    from rewards.data import task_splits

    reward_fn = resolve_reward(config.reward_spec)
    train_set, _test = task_splits(config.task, config.data, config.data_sample, config.test_size, config.global_seed)
    model_path = resolve_model(config.model_name)
    run_dir = Path(config.output_dir) / run_dir_name(config.experiment, config.model_name, config.global_seed)
    runlog = RunLog(run_dir, {**config.to_dict(), "model_path": model_path})
    print(f"run directory: {run_dir}", flush=True)

    options = EngineOptions(
        device=config.resolved_device, num_engines=config.num_engines, cuda_devices=config.gpu_ids or None,
        dtype=config.precision, master_dtype=config.master_dtype, max_model_len=config.max_model_len,
        seed=config.global_seed,
    )
    init_ray(config.ray_address, verbose=config.verbose,
             num_cpus=None if config.ray_address else max(options.num_engines, 1))
    started = time.perf_counter()
    pool = EnginePool.start(model_path, options, config.ray_address)
    print(f"{len(pool.engines)} engine(s) ready in {time.perf_counter() - started:.1f}s", flush=True)
    try:
        Coordinator(config, pool.engines, train_set, reward_fn, runlog).run()
        final = pool.engines[0].export(str(run_dir / "final"))
        print(f"final model: {final}")
    finally:
        runlog.close()
        pool.shutdown()
    report(run_dir)
    return run_dir


def report(run_dir: Path) -> None:
    """The closing lines of a run: learning margin, plot, where the logs are."""
    from esvllm.plot import learning_summary, plot_run

    summary = learning_summary(run_dir)
    if summary:
        print(f"mean reward, first {summary['window']} iterations: {summary['first']:.4f}; "
              f"last {summary['window']}: {summary['last']:.4f}; gain {summary['gain']:+.4f}")
    print(f"reward plot: {plot_run(run_dir)}")
    print(f"TensorBoard logs: {run_dir}  (make tensorboard, or: tensorboard --logdir {run_dir} --host 127.0.0.1)")


if __name__ == "__main__":
    main()
