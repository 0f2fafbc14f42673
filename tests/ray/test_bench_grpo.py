"""`make bench-grpo` in miniature (benchmarks.grpo): both sides on the same held-out set, the same
completion budget, and every figure of its table recomputed from the per-problem records.

No Ray here (the ES side runs its one HF engine in this process), but whole runs: the slower tier."""

import json
from pathlib import Path

import pytest

from benchmarks.grpo import GROUP_SIZE, PROMPTS_PER_STEP, main


@pytest.mark.usefixtures("demo_model")  # its base model; the test runs last, once it is built (tests/conftest.py)
def test_the_grpo_benchmark_compares_like_with_like_and_its_figures_come_from_the_records(tmp_path):
    result = main(["--budget", "0.02", "--learning_rates", "1e-4", "--out", str(tmp_path / "bench"),
                   "--runs", str(tmp_path / "runs"), "--plot", str(tmp_path / "grpo.png"), "--es_flags", "--engine", "hf", "--in_process",
                   "--num_engines", "1", "--test_size", "64", "--population_size", "4", "--batch_size", "60"])
    es, (grpo,) = result["es"], result["grpo"]
    assert es["completions"] == 2 * 4 * 60  # 2 iterations x population x prompts: four GRPO steps of 4 prompts x 30
    assert 0 <= es["completions"] - grpo["completions"] < GROUP_SIZE * PROMPTS_PER_STEP  # the same budget
    # Both evaluate the base model first, on the same problems, with the same engine here: the same answers.
    assert grpo["points"][0]["accuracy"] == es["points"][0]["accuracy"]
    for point in grpo["points"]:
        records = [json.loads(line) for line in
                   (tmp_path / "runs" / "grpo_lr0.0001" / f"step_{point['step']:06d}" / "eval.jsonl").open()]
        assert len(records) == 64
        assert point["accuracy"] == sum(r["answer"] for r in records) / 64
        assert point["sum_rate"] == sum(r["sum"] for r in records) / 64
    assert grpo["steps"] == 4 and grpo["points"][-1]["step"] == grpo["steps"] and grpo["points"][-1]["tokens"] > 0
    assert (tmp_path / "grpo.png").is_file() and (tmp_path / "bench" / "grpo.json").is_file() and "GRPO lr 0.0001" in (tmp_path / "bench" / "grpo.md").read_text()
