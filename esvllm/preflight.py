"""Checks that need the data and the model's config but no engine: prompt lengths and the memory plan.

Both run before Ray or any engine starts (and are all that `--dry_run` does after validating the
config): a prompt too long for --max_model_len is named with its index and lengths, and a run whose
ES state or KV cache would not fit the GPU is refused with what to change.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

from esvllm.memory import MemoryPlan, ModelShape, batched_tokens, plan

CHARS_PER_TOKEN_ESTIMATE = 3  # without a tokenizer: fewer characters per token than Qwen's ~4, so lengths err high


def token_counts(model_dir: str, prompts: list[str]) -> tuple[list[int], bool]:
    """Token count of each prompt, and whether they are estimates (no tokenizer in the model dir)."""
    if not prompts:
        return [], False
    has_tokenizer = any((Path(model_dir) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    if not has_tokenizer:
        return [math.ceil(len(p) / CHARS_PER_TOKEN_ESTIMATE) for p in prompts], True
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]], False


def check_prompt_lengths(splits: dict[str, list[dict]], counts: dict[str, list[int]], max_tokens: int,
                         max_model_len: int) -> None:
    for split, samples in splits.items():
        for index, (sample, length) in enumerate(zip(samples, counts[split])):
            if length + max_tokens > max_model_len:
                raise ValueError(
                    f"{split} sample {index} has a prompt of {length} tokens; with --max_tokens {max_tokens} it needs "
                    f"{length + max_tokens} > --max_model_len {max_model_len}. Raise --max_model_len to at least "
                    f"{length + max_tokens}, lower --max_tokens, or drop the sample ({sample['prompt'][:60]!r}...)")


def gpu_memory_bytes(config) -> int:
    """One GPU's memory: --gpu_memory_gb, else what nvidia-smi reports for the first GPU used."""
    if config.gpu_memory_gb:
        return int(config.gpu_memory_gb * 1e9)
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)
        totals = [int(line) * 2**20 for line in out.stdout.split() if line.strip().isdigit()]
        if totals:
            ids = config.gpu_ids or [0]
            return min(totals[i] for i in ids if i < len(totals))
    raise ValueError("no GPU to plan for: pass --gpu_memory_gb G (the memory of one GPU, in GB)")


def gpu_name(config) -> str | None:
    """The first used GPU's name from nvidia-smi (None without one: planning for another machine)."""
    if config.gpu_memory_gb or not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                         timeout=20)
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    ids = config.gpu_ids or [0]
    return names[ids[0]] if names and ids[0] < len(names) else None


def memory_plan(config, model_dir: str, longest_prompt: int, optimizer_bytes: int = 0) -> MemoryPlan:
    from engines.options import EngineOptions
    from engines.variant import Variant

    shape = ModelShape.from_config(json.loads((Path(model_dir) / "config.json").read_text()))
    prompts = config.batch_size or config.data_sample
    dtype = config.precision if config.precision != "auto" else "bfloat16"
    variant = Variant.from_config(config)
    memory = gpu_memory_bytes(config)
    return plan(shape, memory, model_dtype=dtype, master_dtype=config.master_dtype,
                # the sequences an engine runs at once: every member's prompts, at most vLLM's max_num_seqs
                tensor_parallel_size=config.tensor_parallel_size,
                sequences=min(prompts * max(variant.lowrank_slots, 1), EngineOptions.max_num_seqs),
                tokens_per_sequence=min(config.max_model_len, longest_prompt + config.max_tokens),
                optimizer_state_bytes_per_parameter=optimizer_bytes,
                max_num_batched_tokens=batched_tokens(memory, gpu_name(config)),
                gpu_memory_utilization=config.gpu_memory_utilization, optimizer=config.optimizer,
                max_num_seqs=EngineOptions.max_num_seqs, **variant.plan_terms())


def preflight(config, model_dir: str, train: list[dict], evals: dict[str, list[dict]]) -> tuple[MemoryPlan | None, dict]:
    """Prompt lengths for every split, then (on CUDA, or for --dry_run) the memory plan."""
    splits = {"training": train, **{f"evaluation set {name!r}": samples for name, samples in evals.items()}}
    counts, estimated = {}, False
    for split, samples in splits.items():
        counts[split], estimated = token_counts(model_dir, [s["prompt"] for s in samples])
    check_prompt_lengths(splits, counts, config.max_tokens, config.max_model_len)
    longest = max((c for values in counts.values() for c in values), default=0)
    facts = {"longest_prompt_tokens": longest, "prompt_lengths_estimated": estimated,
             "train_samples": len(train), "eval_samples": {name: len(s) for name, s in evals.items()}}
    if config.resolved_device != "cuda" and not config.gpu_memory_gb:
        return None, facts
    optimizer_bytes = {"sgd": 0, "momentum": 4, "adam": 8}[config.optimizer]  # fp32 moments per parameter
    return memory_plan(config, model_dir, longest, optimizer_bytes), facts

