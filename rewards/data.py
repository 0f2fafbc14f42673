"""Datasets for the tasks: built-in seeded generators and loaders for files on disk.

A sample is a dict with a `prompt` and the fields its reward reads (`numbers`, `target`, `answer`).
Loaders read JSON (a list of rows, like the paper's countdown.json), JSONL, and Hugging Face datasets
saved with `save_to_disk` (a DatasetDict's split with `path:split`). The prompt comes from
`--prompt_field` (by default the first of prompt, context, problem, question, messages), through
`--template`: `plain` (the text as it is), `chat` (the model tokenizer's chat template; a `messages`
column always goes through it), `qwen_math` (the paper's math prompt), or `auto` (the task's own).

Splits as the paper makes them: from a file, the first `--data_sample` rows train and the next
`--test_size` rows are held out; `--eval_data` names other files (or splits) to evaluate on instead,
each with its own metrics. A prompt found in a training and an evaluation split is reported.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rewards.addition import addition_splits
from rewards.conciseness import generate_length_prompts
from rewards.countdown import generate_problems

GENERATORS = {"countdown": generate_problems, "conciseness": generate_length_prompts}
SPLITTERS = {"addition": addition_splits}  # tasks whose held-out problems come from a pool of their own
FILE_ONLY = ("math",)  # tasks without built-in data: --data FILE
TASKS = (*GENERATORS, *SPLITTERS, *FILE_ONLY)  # each task's default reward has the task's name
TEMPLATES = ("auto", "plain", "chat", "qwen_math")
PROMPT_FIELDS = ("prompt", "context", "problem", "question", "messages")
TASK_TEMPLATE = {"math": "qwen_math"}


class Formatter:
    """Turns a data row into a sample: the prompt from its field through the template."""

    def __init__(self, task: str, prompt_field: str | None = None, template: str = "auto", model_dir: str | None = None):
        if template not in TEMPLATES:
            raise ValueError(f"--template {template!r}: use one of {', '.join(TEMPLATES)}")
        self.field, self.model_dir = prompt_field, model_dir
        self.template = TASK_TEMPLATE.get(task, "plain") if template == "auto" else template
        self._tokenizer = None

    def __call__(self, row: dict, where: str) -> dict:
        field = self.field or next((f for f in PROMPT_FIELDS if f in row), None)
        if field is None or field not in row:
            wanted = f"column {self.field!r}" if self.field else f"column among {list(PROMPT_FIELDS)}"
            raise ValueError(f"{where}: no {wanted} for the prompt; its columns are {sorted(row)} "
                             "(name one with --prompt_field)")
        value = row[field]
        if isinstance(value, str) and not value.strip():
            raise ValueError(f"{where}: the prompt ({field!r}) is empty; fill it or remove the row")
        if not isinstance(value, (str, list)):
            raise ValueError(f"{where}: the prompt ({field!r}) is {type(value).__name__} {value!r}, not text; "
                             "give a string (or a list of chat messages)")
        sample = dict(row)
        if "answer" in sample and "target" not in sample:
            sample["target"] = sample["answer"]
        sample["prompt"] = self.format(value)
        if not sample["prompt"].strip():
            raise ValueError(f"{where}: the prompt is empty after the {self.template!r} template; fill it or remove the row")
        return sample

    def format(self, value) -> str:
        if isinstance(value, list) or self.template == "chat":  # messages, or a text as the user's turn
            messages = value if isinstance(value, list) else [{"role": "user", "content": str(value)}]
            return self.tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.template == "qwen_math":
            from rewards.math import qwen_math_prompt

            return qwen_math_prompt(str(value))
        return str(value)

    def tokenizer(self):
        if self._tokenizer is None:
            if self.model_dir is None:
                raise ValueError("--template chat needs the model's tokenizer (its chat template)")
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            if not getattr(self._tokenizer, "chat_template", None):
                raise ValueError(f"--template chat: the tokenizer of {self.model_dir} has no chat template")
        return self._tokenizer


def load_rows(spec: str) -> list[dict]:
    """Rows of a .json, .jsonl or HF `save_to_disk` directory (`DIR:split` for one split)."""
    return [row for _, row in located_rows(spec)]


def located_rows(spec: str) -> list[tuple[str, dict]]:
    """(where, row) of each row of a data file: `FILE: line N` for JSONL, `FILE: row N` otherwise;
    a row that is not valid JSON or not an object is named with its line and the fix."""
    path, split = spec, None
    if not Path(spec).expanduser().exists() and ":" in spec:
        path, split = spec.rsplit(":", 1)
    source = Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"data file {spec!r} does not exist ({source.resolve()})")
    if source.is_dir():
        located = [(f"{spec}: row {i}", row) for i, row in enumerate(_load_hf_dataset(source, split, spec))]
    elif source.suffix == ".jsonl":
        located = []
        for number, line in enumerate(source.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    located.append((f"{spec}: line {number}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{spec}: line {number} is not valid JSON ({exc.msg} at column {exc.colno}); "
                                     "fix or remove that line") from None
    else:
        try:
            rows = json.loads(source.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{spec}: not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})") from None
        if isinstance(rows, dict):  # {"train": [...]} style
            rows = rows[split] if split else rows.get("train") or next(iter(rows.values()))
        located = [(f"{spec}: row {i}", row) for i, row in enumerate(rows)]
    if not located:
        raise ValueError(f"data file {spec!r} holds no samples")
    for where, row in located:
        if not isinstance(row, dict):
            raise ValueError(f"{where} is a {type(row).__name__}, not an object with a prompt field; "
                             'write each row as {"prompt": ..., ...}')
    return located


def load_samples(spec: str, formatter: Formatter | None = None) -> list[dict]:
    """Samples of a data file; the default formatter takes the prompt as it is."""
    formatter = formatter or Formatter("custom")
    return [formatter(row, where) for where, row in located_rows(spec)]


def _load_hf_dataset(source: Path, split: str | None, spec: str) -> list[dict]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise ImportError(f"{source} looks like a Hugging Face dataset: `pip install datasets`") from None
    dataset = load_from_disk(str(source))
    if hasattr(dataset, "keys"):  # a DatasetDict
        if split is None:
            split = "train" if "train" in dataset else next(iter(dataset.keys()))
        if split not in dataset:
            raise ValueError(f"{spec!r}: no split {split!r}; the splits are {sorted(dataset.keys())}")
        dataset = dataset[split]
    return [dict(row) for row in dataset]


def task_splits(task: str, data: str | None, train_size: int, test_size: int, seed: int,
                formatter: Formatter | None = None) -> tuple[list, list]:
    """(train, test) for `task`: the first rows of `data` and the next ones, or the task's generator
    (its prompts through `formatter`'s template too, e.g. --template chat)."""
    if not data and task in SPLITTERS:
        return tuple(templated(split, formatter) for split in SPLITTERS[task](train_size, test_size, seed))
    if not data and task not in GENERATORS:
        raise ValueError(f"task {task!r} has no built-in data: pass --data FILE")
    if data:
        samples = load_samples(data, formatter or Formatter(task))
        if len(samples) < train_size:
            raise ValueError(f"{data}: {len(samples)} samples, fewer than --data_sample {train_size}")
    else:
        samples = templated(GENERATORS[task](train_size + test_size, seed), formatter)
    train, test = samples[:train_size], samples[train_size : train_size + test_size]
    check_apart(train, {"held-out": test})
    return train, test


def templated(samples: list[dict], formatter: Formatter | None) -> list[dict]:
    """Generated samples with their prompts through the template (plain leaves them as generated)."""
    if formatter is None or formatter.template == "plain":
        return samples
    return [{**sample, "prompt": formatter.format(sample["prompt"])} for sample in samples]


def eval_sets(specs: list[str], formatter: Formatter) -> dict[str, list[dict]]:
    """{name: samples} of `--eval_data name=path[:split] ...` (a bare path is named after its file)."""
    sets = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec.split(":")[0]).stem, "", spec)
        if name in sets:
            raise ValueError(f"--eval_data: two sets named {name!r}; name them: NAME=PATH")
        sets[name] = load_samples(path, formatter)
    return sets


def check_apart(train: list[dict], evaluations: dict[str, list[dict]]) -> int:
    """Prompts of an evaluation split that are also training prompts (logged: such a split is not held out)."""
    prompts = {s["prompt"] for s in train}
    total = 0
    for name, samples in evaluations.items():
        shared = sum(s["prompt"] in prompts for s in samples)
        if shared:
            logging.getLogger(__name__).warning("%d prompts of the %s split are also training prompts", shared, name)
        total += shared
    return total
