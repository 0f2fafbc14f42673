"""The math task through a whole run on fake engines: chat template, grading, records."""

import json

from esvllm.runlog import read_metrics
from tests.helpers import FAKE, run


def test_the_math_task_runs_end_to_end_on_the_tiny_model(tmp_path, ray_session):
    problems = [("What is 1+1?", "2"), ("Compute $\\frac{1}{2}+\\frac{1}{4}$.", "\\frac{3}{4}"), ("Solve x+3=5.", "2"),
                ("What is 2^5?", "32"), ("Simplify $\\sqrt{16}$.", "4")]
    data = tmp_path / "math.jsonl"
    data.write_text("\n".join(json.dumps({"problem": p, "answer": a}) for p, a in problems))
    run_dir = run(tmp_path, "math", ["--task", "math", "--data", str(data), "--data_sample", "3", "--test_size", "2",
                                     "--num_engines", "1", "--num_iterations", "2", "--max_tokens", "16",
                                     "--max_model_len", "512", "--eval_every", "2"], base=FAKE)
    records = read_metrics(run_dir)
    assert len(records) == 2 and all(r["reward_errors"] == 0 for r in records)  # graded, nothing raised
    rows = [json.loads(line) for line in (run_dir / "eval" / "iter_000002.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["prompt"].startswith("<|im_start|>system\nPlease reason step by step")
    assert rows[0]["sample"]["answer"] in ("\\frac{3}{4}", "2", "32", "4")
