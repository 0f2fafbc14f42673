"""Shared pieces of the training tests: the small runs they compare against."""

import signal

import torch
from safetensors.torch import load_file

from esvllm.run import main

ARGS = ["--model_name", "tiny", "--task", "conciseness", "--num_engines", "2", "--population_size", "4",
        "--num_iterations", "3", "--sigma", "0.05", "--alpha", "0.01", "--data_sample", "6", "--test_size", "4",
        "--max_tokens", "12", "--max_model_len", "128", "--global_seed", "3", "--noise_cache_mb", "64"]
# Checkpoints, eval and best-model export must not change the trajectory: the first run uses them.
EXTRAS = ["--save_every", "1", "--eval_every", "3", "--save_best"]
# The same run on fake engines (engines.fake): the real ES state, no model; seconds, not minutes.
FAKE = ARGS + ["--engine", "fake"]


def engine_options(config=None, **overrides):
    """Engine options as a run builds them (from a RunConfig: CPU, one engine, the tests' max_model_len
    512 unless `config` says otherwise), with `overrides` of EngineOptions fields."""
    import dataclasses

    from engines.options import EngineOptions
    from esvllm.config import RunConfig

    base = EngineOptions.from_config(config or RunConfig(device="cpu", max_model_len=512))
    return dataclasses.replace(base, **overrides)


def run(tmp_path, name, extra=(), base=ARGS):
    return main(list(base) + list(extra) + ["--output_dir", str(tmp_path / name)])


def final_weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def without_timing(records):
    volatile = ("time", "tokens_per_s", "engine_restarts", "engines")
    return [{k: v for k, v in r.items() if k not in volatile} for r in records]


def without_eval(records):
    return [{k: v for k, v in r.items() if k != "eval"} for r in without_timing(records)]


def terminal_signals() -> None:
    """In the child: SIGINT as a terminal's foreground job has it (a test runner's workers may ignore
    it, and an ignored signal is inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# A Llama 3 Instruct chat template in short: header tokens around each turn, <|eot_id|> after it.
LLAMA3_CHAT_TEMPLATE = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                        "{{ m['content'] }}<|eot_id|>{% endfor %}"
                        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def llama3_conventions(tmp_path, prompt: str):
    """tiny-llama with a released Llama 3 Instruct's token conventions: no pad token, a chat template,
    and several EOS ids in generation_config.json, one of them the token the model greedily generates
    first after `prompt` (found here with transformers). Returns (path, that token's id)."""
    import json
    import shutil
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from esvllm.models import resolve_model

    path = Path(tmp_path) / "llama3-conventions"
    shutil.copytree(resolve_model("tiny-llama"), path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        first = int(model(tokenizer(prompt, return_tensors="pt").input_ids).logits[0, -1].argmax())
    assert first != tokenizer.eos_token_id
    files = {name: json.loads((path / name).read_text())
             for name in ("tokenizer_config.json", "generation_config.json", "config.json")}
    files["tokenizer_config.json"].update(pad_token=None, chat_template=LLAMA3_CHAT_TEMPLATE)
    files["generation_config.json"].update(eos_token_id=[tokenizer.eos_token_id, first], pad_token_id=None)
    files["config.json"]["pad_token_id"] = None
    for name, content in files.items():
        (path / name).write_text(json.dumps(content, indent=2))
    return str(path), first
