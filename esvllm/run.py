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

import contextlib
import json
import logging
import signal
import sys
import time
from pathlib import Path

from esvllm.cli import build_parser
from esvllm.config import RunConfig, load_experiment
from esvllm.memory import measured_shortfalls
from esvllm.machine import check_environment

ALIASES = {"output_dir": ["--experiment_dir"], "model_name": ["--model"]}


def parser():
    return build_parser(RunConfig, "python -m esvllm.run", "Fine-tune an LLM with ES on vLLM engines.", ALIASES)


def resolve_config(argv: list[str] | None = None) -> RunConfig:
    return RunConfig(**settings_with(vars(parser().parse_args(argv))))


def settings_with(given: dict) -> dict:
    """The settings a run starts from, the given ones on top: a resumed run's own config.json, or the
    experiment's preset (the command line and esvllm.train both come through here)."""
    if given.get("resume"):  # the stopped run's own config; settings given now override it
        saved = Path(given["resume"]) / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {given['resume']!r}: no config.json there; pass a run directory")
        settings = json.loads(saved.read_text())
        settings.pop("model_path", None)
    else:
        settings = load_experiment(given["experiment"]) if "experiment" in given else {}
    return {**settings, **given}


def main(argv: list[str] | None = None) -> Path:
    try:
        config = resolve_config(argv)
        check_environment(config)
        inputs = prepare_inputs(config)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        sys.exit(f"error: {exc}")
    if config.dry_run:
        report_dry_run(config, inputs)
    logging.basicConfig(level=logging.INFO if config.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from engines.fleet import EnginesDisagree, NoEngineLeft
    from esvllm.coordinator import RewardFailed

    try:
        return train(config, inputs)
    except (EnginesDisagree, NoEngineLeft, RewardFailed) as exc:  # each message says what was saved
        sys.exit(f"error: {exc}")


def prepare_inputs(config: RunConfig) -> dict:
    """Data splits, the base model and the preflight checks (prompt lengths, memory plan): no engine."""
    from esvllm.models import resolve_model
    from esvllm.preflight import preflight
    from rewards.data import Formatter, check_apart, eval_sets, task_splits

    base_model = resolve_model(config.model_name)
    formatter = Formatter(config.task, config.prompt_field, config.template, base_model)
    train_set, test_set = task_splits(config.task, config.data, config.data_sample, config.test_size,
                                      config.global_seed, formatter)
    evals = eval_sets(config.eval_data, formatter) if config.eval_data else {"heldout": test_set}
    if config.eval_every and not all(evals.values()):
        raise ValueError(f"--eval_every {config.eval_every}: no held-out samples (--data has no rows after the "
                         f"{config.data_sample} training ones); pass --eval_data FILE or a --test_size > 0")
    plan, facts = preflight(config, base_model, train_set, evals)
    facts["eval_overlap"] = check_apart(train_set, evals)
    if plan is not None and not plan.fits and not config.dry_run:
        raise ValueError(plan.describe())
    return {"train": train_set, "evals": evals, "model": base_model, "plan": plan, "facts": facts}


def report_dry_run(config: RunConfig, inputs: dict) -> None:
    """Print what a run would do; the last line is one JSON object. Exit 0 when it fits, 1 when not."""
    sys.exit(0 if dry_run_summary(config, inputs)["fits"] else 1)


def dry_run_summary(config: RunConfig, inputs: dict) -> dict:
    """Print the plan of a run (data, GPUs, memory) and return it; the last line printed is its JSON."""
    plan = inputs["plan"]
    facts = inputs["facts"]
    print(f"config ok: --experiment {config.experiment}, {facts['train_samples']} training samples, evaluation "
          + ", ".join(f"{name} {count}" for name, count in facts["eval_samples"].items())
          + f"; longest prompt {facts['longest_prompt_tokens']} tokens"
          + (" (estimated: no tokenizer)" if facts["prompt_lengths_estimated"] else ""))
    summary = {"fits": True, "device": config.resolved_device, **facts}
    if config.resolved_device == "cuda":
        ids = config.gpu_ids or list(range(config.num_engines * config.tensor_parallel_size))
        engines = len(ids) // config.tensor_parallel_size
        where = "this process, --in_process" if config.in_process else "the run's Ray"
        print(f"GPUs: {','.join(map(str, ids))} (CUDA_VISIBLE_DEVICES of {where}): {engines} engine(s) of "
              f"{config.tensor_parallel_size} GPU(s)")
        summary["cuda_devices"] = ids
    if plan is not None:
        print(plan.describe())
        summary.update(plan.to_dict())
    print(json.dumps(summary))
    return summary


def prepare_run(config: RunConfig, model_path: str):
    """(run_dir, records so far, (weights path, log entries they hold), RunLog, UpdateLog) of a new
    or resumed run. A resumed run continues after the last iteration of its update log."""
    from esvllm import checkpoint
    from esvllm.runlog import RunLog, read_metrics, run_dir_name
    from engines.updatelog import UpdateLog

    if not config.resume:
        run_dir = Path(config.output_dir) / run_dir_name(config.experiment, config.model_name, config.global_seed)
        runlog = RunLog(run_dir, {**config.to_dict(), "model_path": model_path}, wandb_project=config.wandb_project)
        return run_dir, [], (model_path, 0), runlog, UpdateLog.create(run_dir)
    run_dir = Path(config.resume)
    log = UpdateLog.load(run_dir)
    weights = (model_path, 0)
    latest = checkpoint.usable_checkpoint(run_dir)  # broken ones are named in a warning and skipped
    if latest is not None:
        state = checkpoint.load_state(latest)
        if state["model_iteration"] > len(log):
            raise ValueError(f"{latest}: its weights hold {state['model_iteration']} iterations but "
                             f"{run_dir}/updates.jsonl only {len(log)}; the update log was truncated")
        weights = (checkpoint.model_path(run_dir, state), state["model_iteration"])
    elif len(log):
        logging.getLogger(__name__).warning("no usable checkpoint in %s: replaying its %d updates from the base "
                                            "model", run_dir, len(log))
    records = read_metrics(run_dir)[: len(log)]  # a metrics line of an uncommitted iteration is dropped
    from esvllm.eval import trim_eval_log

    trim_eval_log(run_dir, len(log))
    if len(records) < len(log):
        logging.getLogger(__name__).warning("metrics.jsonl has %d of %d iterations; plots start late",
                                            len(records), len(log))
    runlog = RunLog(run_dir, config.to_dict(), resumed_records=records, wandb_project=config.wandb_project)
    return run_dir, records, weights, runlog, log


def train(config: RunConfig, inputs: dict | None = None) -> Path:
    """Start the engines, run (or resume) every iteration, export final/, stop engines and Ray."""
    from engines.fleet import Fleet
    from engines.options import EngineOptions
    from engines.pool import start_engines
    from engines.ray_node import exit_without_ray, private_ray_is_gone, start_ray
    from esvllm.coordinator import Coordinator
    from esvllm.eval import Evaluator
    from esvllm.runlog import write_atomic
    from esvllm.scoring import Scorer

    inputs = inputs or prepare_inputs(config)
    train_set, evals, base_model = inputs["train"], inputs["evals"], inputs["model"]
    scorer = Scorer(config.reward_spec, config.reward_fallback, config.reward_timeout)
    run_dir, records, weights, runlog, log = prepare_run(config, base_model)
    evaluator = Evaluator(evals, scorer, config.max_tokens, run_dir) if config.eval_every else None
    start = len(log)
    print(f"run directory: {run_dir}" + (f" (resuming at iteration {start})" if config.resume else ""), flush=True)

    options = EngineOptions.from_config(config, inputs["plan"])
    # With the --cuda_devices ids; --in_process runs without Ray.
    owns_ray = not options.in_process and start_ray(options, config.ray_address, config.verbose)
    pool = coordinator = None
    ray_gone = False
    try:
        with interrupts_raise():
            started = time.perf_counter()
            pool = start_engines(weights[0], options, config.ray_address)
            print(f"{len(pool.engines)} engine(s) ready in {time.perf_counter() - started:.1f}s", flush=True)
            write_atomic(run_dir / "engines.json", json.dumps([e.info for e in pool.engines], indent=2))
            warn_about_kernels(pool.engines)
            if inputs["plan"] is not None:  # what vLLM measured at start, against the plan
                for note in measured_shortfalls(inputs["plan"], [e.info for e in pool.engines]):
                    logging.getLogger(__name__).warning("memory plan: %s", note)
            fleet = Fleet(pool, log, weights)
            fleet.catch_up_all()  # resume: replay the update log since the starting weights
            coordinator = Coordinator(config, fleet, train_set, scorer, runlog, evaluator, run_dir, records)
            coordinator.run(start=start)
            coordinator.save()
            final = fleet.export(str(run_dir / "final"), options.model_dtype())  # checkpoints keep fp32
            print(f"final model: {final}")
    except KeyboardInterrupt:
        done = coordinator.fleet.log.committed if coordinator is not None else start
        ray_gone = owns_ray and private_ray_is_gone()  # the signal went to the whole process group
        path = None
        if coordinator is not None:
            try:  # no export: engines may be busy or gone; the update log from the last export is enough
                path = coordinator.save(with_weights=False)
            except Exception as exc:  # noqa: BLE001 - the update log on disk still holds every committed iteration
                print(f"\ncheckpoint not saved ({exc})", flush=True)
        if path is not None:
            print(f"\ninterrupted: checkpoint {path}; --resume {run_dir} continues at iteration {done}", flush=True)
        elif coordinator is not None:
            print(f"\ninterrupted: --resume {run_dir} replays the update log and continues at iteration {done}",
                  flush=True)
        else:
            print(f"\ninterrupted before training started: nothing new was saved; --resume {run_dir} "
                  f"continues at iteration {done}", flush=True)
        raise SystemExit(130)
    finally:
        runlog.close()
        scorer.close()
        if ray_gone:
            exit_without_ray(130)
        if pool is not None:
            pool.shutdown()
        if owns_ray:
            import ray

            ray.shutdown()
    report(run_dir)
    return run_dir


def warn_about_kernels(engines) -> None:
    """Say once when an engine refused a CPU kernel level (its own warning stays in Ray's logs)."""
    refused = {(e.info.get("cpu", "?"), level, e.info.get("cpu_kernel"), why) for e in engines
               for level, why in (e.info.get("cpu_kernel_refused") or {}).items()}
    for cpu, level, used, why in sorted(refused):
        logging.getLogger(__name__).warning("CPU %s: kernel level %s refused (%s); the engines use level %s",
                                            cpu, level, why, used)


@contextlib.contextmanager
def interrupts_raise():
    """SIGTERM (like SIGINT) raises KeyboardInterrupt, so both save a checkpoint and stop cleanly."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report(run_dir: Path) -> None:
    """The closing lines of a run: held-out before/after, training reward, plot, where the logs are."""
    from esvllm.plot import before_after, learning_summary, plot_run

    table = before_after(run_dir)
    if table:
        print(table)
    summary = learning_summary(run_dir)
    if summary:
        print(f"training reward, first {summary['window']} iterations: {summary['first']:.4f}; "
              f"last {summary['window']}: {summary['last']:.4f}; gain {summary['gain']:+.4f}")
    try:
        print(f"curves: {plot_run(run_dir)}")
    except ImportError as exc:  # a declared dependency; a bare GPU image may still lack it
        print(f"curves: not drawn ({exc}; pip install matplotlib, then python -m esvllm.plot {run_dir})")
    print(f"TensorBoard logs: {run_dir}  (make tensorboard, or: tensorboard --logdir {run_dir} --host 127.0.0.1)")


def cli() -> None:
    """`python -m esvllm.run`: main, with Ctrl-C or SIGTERM before training starts (imports, checks)
    said in one line. (SIGTERM's default action would end the process without a word.)"""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted before the run started: nothing was saved", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
