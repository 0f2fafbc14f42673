"""End to end on CPU: real Ray engines, a real run directory, reproducible, and the update it applies
equals alpha/N * sum z_i eps_i recomputed here from the logged seeds and rewards."""

import json
import statistics

import torch
from safetensors.torch import load_file

from kernels import noise
from esvllm.runlog import read_metrics


def test_a_run_leaves_metrics_tensorboard_and_a_final_model(first_run):
    records = read_metrics(first_run)
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert all(r["checksum"] for r in records)  # both engines agreed after every iteration
    assert json.loads((first_run / "config.json").read_text())["population_size"] == 4
    for key in ("reward_mean", "reward_std", "reward_min", "reward_max", "time", "tokens_per_s", "update_norm", "seeds"):
        assert key in records[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(first_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"reward/mean", "time/iteration_s", "throughput/tokens_per_s", "es/update_norm"} <= tags
    assert len(events.Scalars("reward/mean")) == 3
    assert (first_run / "final" / "model.safetensors").is_file()
    assert (first_run / "rewards.png").stat().st_size > 0


def test_the_final_weights_equal_base_plus_the_logged_updates(first_run, tiny_model):
    base = load_file(f"{tiny_model}/model.safetensors")
    final = load_file(str(first_run / "final" / "model.safetensors"))
    records = read_metrics(first_run)
    for name, expected in base.items():
        expected = expected.clone()
        for record in records:  # recomputed here: z-scores of the logged rewards, alpha / N
            rewards = record["rewards"]
            mean, std = statistics.fmean(rewards), statistics.pstdev(rewards)
            for seed, reward in zip(record["seeds"], rewards):
                z = 0.0 if std < 1e-8 else (reward - mean) / std
                expected += 0.01 / len(rewards) * z * noise(seed, name, expected.shape)
        torch.testing.assert_close(final[name], expected, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")
        assert not torch.equal(final[name], base[name]), f"{name} did not change"


def test_eval_of_the_exported_model_matches_the_in_training_eval(first_run):
    from esvllm.eval import main as evaluate

    in_training = read_metrics(first_run)[-1]["eval"]
    standalone = evaluate(["--model", str(first_run / "final"), "--task", "conciseness", "--data_sample", "6",
                           "--test_size", "4", "--global_seed", "3", "--max_tokens", "12", "--max_model_len", "128",
                           "--precision", "float32", "--num_engines", "2"])
    assert standalone == in_training
    rows = [json.loads(l) for l in (first_run / "final" / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {"prompt", "completion", "reward"} <= set(rows[0])


def test_checkpoints_and_the_best_model_are_written(first_run):
    from esvllm.checkpoint import latest_checkpoint, load_state

    from engines.updatelog import UpdateLog

    latest = latest_checkpoint(first_run)
    state = load_state(latest)
    log = UpdateLog.load(first_run)
    assert state["iteration"] == 3 == len(log)
    assert [[s for s, _ in pairs] for pairs, _ in log.pairs()] == [r["seeds"] for r in read_metrics(first_run)]
    assert (latest / "model" / "model.safetensors").is_file()
    assert len(list((first_run / "checkpoints").glob("iter_*"))) == 2  # --keep_checkpoints 2
    assert (first_run / "best" / "model.safetensors").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(first_run))
    events.Reload()
    assert "eval/reward" in events.Tags()["scalars"]




def test_one_engine_in_this_process_trains_and_evaluates_as_the_ray_engines_do(first_run, tmp_path):
    """--in_process: the vLLM engine in the driver's own process, no Ray actor; the weights of the
    two-engine Ray run, and the same evaluation of its export."""
    import os

    from esvllm.eval import main as evaluate
    from tests.helpers import EXTRAS, final_weights, run, same_weights, without_timing

    alone = run(tmp_path, "in_process", [*EXTRAS, "--in_process", "--num_engines", "1"])
    assert json.loads((alone / "engines.json").read_text())[0]["pid"] == os.getpid()
    assert without_timing(read_metrics(alone)) == without_timing(read_metrics(first_run))
    assert same_weights(final_weights(alone), final_weights(first_run))
    standalone = evaluate(["--model", str(alone / "final"), "--task", "conciseness", "--data_sample", "6",
                           "--test_size", "4", "--global_seed", "3", "--max_tokens", "12", "--max_model_len", "128",
                           "--precision", "float32", "--in_process", "--output", str(tmp_path / "eval.jsonl")])
    assert standalone == read_metrics(first_run)[-1]["eval"]
