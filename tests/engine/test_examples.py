"""examples/custom_reward.py as a user runs it: a closure reward on the demo model through esvllm.train,
on real vLLM engines; every held-out record's reward is the example's reward of that completion.
(Where the demo's model itself starts: tests/ray/test_demo_model.py.)"""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom_reward.py"


@pytest.fixture(scope="module")
def example_run(tmp_path_factory, demo_model):
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

