"""The before/after report a run prints at its end (esvllm.plot.before_after), from its records."""

import json

from esvllm.plot import before_after


def write_eval(run_dir, iteration, completions, targets):
    rows = [{"set": "heldout", "prompt": f"p{i}", "completion": c, "reward": float(c == t), "answer": float(c == t), "sum": float(c == t)}
            for i, (c, t) in enumerate(zip(completions, targets))]
    (run_dir / "eval").mkdir(exist_ok=True)
    (run_dir / "eval" / f"iter_{iteration:06d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mean = lambda key: sum(r[key] for r in rows) / len(rows)
    return {"iteration": iteration, "set": "heldout", "samples": len(rows), "reward": mean("reward"),
            "accuracy": mean("answer"), "sum_rate": mean("sum")}


def test_the_report_counts_answers_that_became_right_and_wrong_from_the_records(tmp_path):
    targets = ["1", "2", "3", "4", "5"]
    # before: right, wrong, wrong, right, wrong; after: wrong, right, other wrong, right, wrong (unchanged)
    summaries = [write_eval(tmp_path, 0, ["1", "x", "y", "4", "z"], targets),
                 write_eval(tmp_path, 10, ["0", "2", "w", "4", "z"], targets)]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(s) + "\n" for s in summaries))
    text = before_after(tmp_path)
    assert "answers: 1 became right, 1 became wrong, 1 other changes, 2 the same" in text
    assert "accuracy                |            0.400 |            0.400" in text
