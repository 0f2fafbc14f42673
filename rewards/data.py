"""Datasets for the tasks: built-in seeded generators and loaders for files on disk.

A sample is a dict with a `prompt` and the fields its reward reads (`numbers`, `target`, ...).
Loaders accept the paper's JSON (a list of {"context", "numbers", "target"}), JSONL with the same
fields (or `prompt` instead of `context`), and Hugging Face datasets saved with `save_to_disk`.
Train and held-out test splits never share a prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

from rewards.conciseness import generate_length_prompts
from rewards.countdown import generate_problems

GENERATORS = {"countdown": generate_problems, "conciseness": generate_length_prompts}
TASKS = tuple(GENERATORS)  # each task's default reward has the task's name


def load_samples(path: str) -> list[dict]:
    """Samples from a .json, .jsonl or HF `save_to_disk` directory; errors name the path."""
    source = Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"data file {path!r} does not exist ({source.resolve()})")
    if source.is_dir():
        rows = _load_hf_dataset(source)
    elif source.suffix == ".jsonl":
        rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    else:
        rows = json.loads(source.read_text())
        if isinstance(rows, dict):  # {"train": [...]} style
            rows = rows.get("train") or next(iter(rows.values()))
    samples = [_normalise(row, path, i) for i, row in enumerate(rows)]
    if not samples:
        raise ValueError(f"data file {path!r} holds no samples")
    return samples


def _load_hf_dataset(source: Path) -> list[dict]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise ImportError(f"{source} looks like a Hugging Face dataset: `pip install datasets`") from None
    dataset = load_from_disk(str(source))
    if hasattr(dataset, "keys"):  # a DatasetDict: take its train split
        dataset = dataset["train"] if "train" in dataset else dataset[next(iter(dataset.keys()))]
    return [dict(row) for row in dataset]


def _normalise(row: dict, path: str, index: int) -> dict:
    sample = dict(row)
    if "prompt" not in sample:
        if "context" not in sample:
            raise ValueError(f"{path}: sample {index} has neither 'prompt' nor 'context': {sorted(row)}")
        sample["prompt"] = sample["context"]
    if "answer" in sample and "target" not in sample:
        sample["target"] = sample["answer"]
    return sample


def task_splits(task: str, data: str | None, train_size: int, test_size: int, seed: int) -> tuple[list, list]:
    """(train, test) for `task`: from `data` if given, else the task's seeded generator."""
    if data:
        samples = load_samples(data)
    elif task in GENERATORS:
        samples = GENERATORS[task](train_size + test_size, seed)
    else:
        raise ValueError(f"task {task!r} has no built-in data: pass --data FILE")
    unique, seen = [], set()
    for sample in samples:  # a prompt in both splits would leak the test set
        if sample["prompt"] not in seen:
            seen.add(sample["prompt"])
            unique.append(sample)
    if len(unique) < train_size + min(test_size, 1):
        raise ValueError(
            f"{data or task}: {len(unique)} distinct samples, fewer than train {train_size} + test {test_size}"
        )
    train, test = unique[:train_size], unique[train_size : train_size + test_size]
    return train, test
