"""examples/custom_reward.py as a user runs it: a closure reward on the demo model through esvllm.train,
on real vLLM engines; every held-out record's reward is the example's reward of that completion.
Its first evaluation (the base model on the first 128 problems of the demo's held-out pool) also
shows where the demo's model, `adder`, starts."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom_reward.py"


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("example")
    done = subprocess.run([sys.executable, str(EXAMPLE), "--iterations", "2", "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = [p for p in out.iterdir() if p.name != "data"]
    return done.stdout, run_dir


def eval_rows(run_dir, iteration):
    return [json.loads(line) for line in (run_dir / "eval" / f"iter_{iteration:06d}.jsonl").read_text().splitlines()]


def test_the_custom_reward_example_trains_and_scores_with_its_own_reward(example_run):
    stdout, run_dir = example_run
    assert "held-out after 2 iterations: reward" in stdout, stdout[-2000:]
    assert (run_dir / "final" / "model.safetensors").stat().st_size > 0
    reward = runpy.run_path(str(EXAMPLE))["near_misses"](partial=0.3)
    evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in evals] == [0, 2]
    records = {}
    for summary in evals:
        rows = eval_rows(run_dir, summary["iteration"])
        assert len(rows) == summary["samples"] == 128
        for row in rows:  # every record, not only the last
            assert {k: row[k] for k in ("reward", "answer", "sum", "near_miss")} == reward(row["completion"], row["sample"])
            assert row["prompt"] == f"{row['sample']['numbers'][0]}+{row['sample']['numbers'][1]}="
        for key, component in (("reward", "reward"), ("accuracy", "answer"), ("sum_rate", "sum")):
            assert summary[key] == pytest.approx(sum(r[component] for r in rows) / len(rows))
        records[summary["iteration"]] = rows
    # the base model's habit the reward is about: the last digit one off (partial credit)
    assert {0.3, 1.0} <= {row["reward"] for row in records[0]}
    assert (run_dir / "rewards.png").stat().st_size > 0


def test_the_adder_starts_between_5_and_50_percent_and_its_corpus_error_holds_it_back(example_run):
    from esvllm.pretrain import last_digit_off

    rows = eval_rows(example_run[1], 0)  # the base model
    accuracy = sum(r["answer"] for r in rows) / len(rows)
    assert 0.05 <= accuracy <= 0.5, accuracy
    # Its most common answer is its corpus's error: the sum with the last digit one too high.
    off = sum(r["completion"] == last_digit_off(str(r["sample"]["target"])) for r in rows) / len(rows)
    assert off >= 0.3 and off > accuracy, (off, accuracy)
    assert sum(r["completion"].isdigit() for r in rows) >= 0.95 * len(rows)  # the format is right already
