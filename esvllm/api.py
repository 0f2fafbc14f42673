"""ES fine-tuning from Python, over the same code as `python -m esvllm.run`.

    import esvllm

    def shorter_is_better(completion: str, sample: dict) -> float:
        return -len(completion)

    run = esvllm.train(model="adder", reward=shorter_is_better, train_data=[{"prompt": "12+7="}, ...],
                       num_iterations=20, population_size=8)
    run.records[-1]["reward_mean"], run.final_model

Every keyword is a `python -m esvllm.run` flag (`esvllm.RunConfig`'s fields), checked by the same
code with the same messages (raised as ValueError / FileNotFoundError instead of printed). Data given
as rows is written to `<output_dir>/data/NAME-<digest>.jsonl` and passed as `--data` / `--eval_data`,
so the run's config.json names real files and the run resumes from the command line as well.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from esvllm.config import RunConfig

Rows = Iterable[Mapping]  # a list of dicts, a datasets.Dataset, ...


@dataclasses.dataclass
class Run:
    """What a finished run left in its directory."""

    run_dir: Path
    config: dict  # config.json
    records: list[dict]  # metrics.jsonl: one per iteration
    evaluations: list[dict]  # eval.jsonl: one summary per evaluation (iteration, reward, accuracy, ...)
    final_model: Path | None  # final/: the trained model in HF format

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        from esvllm.runlog import read_metrics

        run_dir = Path(run_dir)
        evals = run_dir / "eval.jsonl"
        return cls(run_dir=run_dir, config=json.loads((run_dir / "config.json").read_text()),
                   records=read_metrics(run_dir),
                   evaluations=[json.loads(line) for line in evals.read_text().splitlines()] if evals.exists() else [],
                   final_model=run_dir / "final" if (run_dir / "final" / "config.json").exists() else None)


def train(model: str | Path | None = None, reward: str | Callable | None = None, train_data: Rows | str | None = None,
          eval_data: Rows | Mapping[str, Rows] | str | list[str] | None = None, *, config: RunConfig | None = None,
          **options) -> Run | dict:
    """Run (or with `resume=RUN_DIR`, continue) ES fine-tuning; returns the `Run`, or with
    `dry_run=True` the plan that `--dry_run` prints (a dict), starting nothing.

    model       built-in name, HF checkpoint directory or Hub name (`--model_name`)
    reward      a name (countdown, ...), "module:function", or a callable `fn(completion, sample)`
                returning a float or a dict with a "reward" key
    train_data  rows with a prompt field (every row trains: data_sample defaults to their number),
                or a data file as `--data` takes it
    eval_data   held-out rows (one set, "heldout"), {name: rows}, or files as `--eval_data` takes them
    config      a RunConfig to start from; keywords override its fields
    """
    _refuse_in_a_spawned_child()
    given = check_option_names(dict(options))
    if config is not None and given.get("resume"):
        raise ValueError("esvllm.train: resume=RUN_DIR continues with that run's own config; drop config=")
    if model is not None:
        given["model_name"] = str(model)
    if reward is not None:
        given["reward"] = reward if isinstance(reward, str) else reward_spec(reward)
    output_dir = Path(given.get("output_dir") or (config.output_dir if config is not None else RunConfig.output_dir))
    if isinstance(train_data, str):
        given["data"] = train_data
    elif train_data is not None:
        given["data"], rows = write_rows(train_data, output_dir, "train")
        given.setdefault("data_sample", rows)  # every row trains
    if eval_data is not None:
        given["eval_data"] = eval_specs(eval_data, output_dir)
    from esvllm.run import settings_with

    settings = {**dataclasses.asdict(config), **given} if config is not None else settings_with(given)
    return run_settings(settings)


def run_settings(settings: dict) -> Run | dict:
    """The command line's path from settings to a finished run, raising where `main` would exit."""
    from esvllm.machine import check_environment
    from esvllm.run import dry_run_summary, prepare_inputs
    from esvllm.run import train as run_training

    config = RunConfig(**settings)
    check_environment(config)
    inputs = prepare_inputs(config)
    if config.dry_run:
        return dry_run_summary(config, inputs)
    return Run.load(run_training(config, inputs))


def _refuse_in_a_spawned_child() -> None:
    """A script without a main guard runs again in every reward worker process (they are spawned,
    and spawning re-imports the main module): say so instead of starting a second run there."""
    import multiprocessing

    if multiprocessing.parent_process() is not None and multiprocessing.current_process().name != "MainProcess":
        raise RuntimeError("esvllm.train was called while a worker process imported your script: put the call "
                           "under `if __name__ == \"__main__\":` (reward workers are spawned, which re-imports it)")


def check_option_names(options: dict) -> dict:
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    for name in options:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=3)
            raise TypeError(f"esvllm.train: no option {name!r}" + (f"; did you mean {', '.join(close)}?" if close else
                            "; the options are python -m esvllm.run's flags (python -m esvllm.run --help)"))
    return options


def reward_spec(fn: Callable) -> str:
    from rewards import spec_of_callable

    if not callable(fn):
        raise ValueError(f"reward {fn!r}: give a reward name, 'module:function' or a callable (completion, sample)")
    return spec_of_callable(fn)


def eval_specs(eval_data, output_dir: Path) -> list[str]:
    if isinstance(eval_data, str):
        return [eval_data]
    if isinstance(eval_data, Mapping):
        return [f"{name}={write_rows(rows, output_dir, name)[0]}" for name, rows in eval_data.items()]
    rows = list(eval_data)
    if rows and all(isinstance(r, str) for r in rows):  # files, as --eval_data takes them
        return rows
    return [f"heldout={write_rows(rows, output_dir, 'heldout')[0]}"]


def write_rows(rows: Rows, output_dir: Path, name: str) -> tuple[str, int]:
    """(path, row count): rows as a JSONL file named after their content (the same rows, the same file)."""
    from esvllm.runlog import write_atomic

    lines = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"{name} data, row {i}: a {type(row).__name__}, not a dict with a prompt field; "
                             'give rows like {"prompt": ...}')
        try:
            lines.append(json.dumps(dict(row), default=_plain, sort_keys=True))
        except TypeError as exc:
            raise ValueError(f"{name} data, row {i}: not JSON-serialisable ({exc})") from None
    if not lines:
        raise ValueError(f"{name} data: no rows")
    text = "\n".join(lines) + "\n"
    path = output_dir / "data" / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
    return str(path), len(lines)


def _plain(value):
    """numpy scalars and arrays (what a datasets.Dataset row may hold) as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
