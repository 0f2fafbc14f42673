"""The demo's base model, `adder`, as the demo's held-out evaluation sees it: where it starts and the
habit ES has to undo. Built here on first use (minutes where it is not cached), so this test runs
first (tests/conftest.py). No Ray: greedy on the HF engine in this process (vLLM generates the same:
tests/engine/test_hf_backend.py)."""

import json

from esvllm.eval import main as evaluate
from esvllm.pretrain import last_digit_off
from esvllm.run import resolve_config


def test_the_adder_starts_between_5_and_50_percent_and_its_corpus_error_holds_it_back(demo_model, tmp_path):
    demo = resolve_config(["--experiment", "demo"])
    records = tmp_path / "base.jsonl"
    evaluate(["--model", demo_model, "--task", demo.task, "--data_sample", str(demo.data_sample), "--test_size",
              str(demo.test_size), "--global_seed", str(demo.global_seed), "--max_tokens", str(demo.max_tokens),
              "--max_model_len", str(demo.max_model_len), "--engine", "hf", "--in_process", "--output", str(records)])
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(rows) == demo.test_size
    accuracy = sum(r["answer"] for r in rows) / len(rows)
    assert 0.05 <= accuracy <= 0.5, accuracy
    # Its most common answer is its corpus's error: the sum with the last digit one too high.
    off = sum(r["completion"] == last_digit_off(str(r["sample"]["target"])) for r in rows) / len(rows)
    assert off >= 0.3 and off > accuracy, (off, accuracy)
    assert sum(r["completion"].isdigit() for r in rows) >= 0.95 * len(rows)  # the format is right already
