"""`make bench-learning` in miniature (benchmarks.learning): its summary is recomputed from the runs'
per-problem records, and a finished run is read back, not repeated.

No Ray here (one HF engine in this process, the tiny model), but whole runs: the slower tier."""

import json
import statistics
from pathlib import Path

from benchmarks.learning import main

FLAGS = ["--engine", "hf", "--in_process", "--num_engines", "1", "--model_name", "tiny", "--test_size", "16",
         "--population_size", "4", "--batch_size", "8", "--max_tokens", "4"]


def test_the_learning_summary_is_what_the_per_problem_records_give_and_runs_are_reused(tmp_path):
    args = ["--recipes", "demo", "previous", "--base_seeds", "0", "--es_seeds", "1", "2", "--iterations", "2",
            "--eval_every", "1", "--out", str(tmp_path / "bench"), "--runs", str(tmp_path / "runs"),
            "--plot", str(tmp_path / "learning.png"), "--flags", *FLAGS]
    results = main(args)
    saved = json.loads((tmp_path / "bench" / "learning.json").read_text())
    for recipe, runs in results.items():
        assert [(r["base_seed"], r["es_seed"]) for r in runs] == [(0, 1), (0, 2)]
        gains = []
        for run in runs:
            run_dir = Path(run["run_dir"])
            assert json.loads((run_dir / "config.json").read_text())["global_seed"] == run["es_seed"]
            firsts_lasts = []
            for iteration in (0, 2):  # the independent computation: the records themselves
                rows = [json.loads(l) for l in (run_dir / "eval" / f"iter_{iteration:06d}.jsonl").read_text().splitlines()]
                assert len(rows) == 16
                firsts_lasts.append(sum(r["sum"] for r in rows) / 16)
            assert [p["iteration"] for p in run["points"]] == [0, 1, 2]
            assert (run["points"][0]["sum_rate"], run["points"][-1]["sum_rate"]) == tuple(firsts_lasts)
            gains.append(firsts_lasts[1] - firsts_lasts[0])
        assert saved["summary"][recipe]["median_gain"] == statistics.median(gains)
        assert (saved["summary"][recipe]["min_gain"], saved["summary"][recipe]["max_gain"]) == (min(gains), max(gains))
    assert (tmp_path / "learning.png").is_file()
    again = main(args)  # every run finished: read back, the same figures
    assert again == results
