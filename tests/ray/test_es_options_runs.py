"""ES options through whole runs on fake engines: engines stay bit-identical, resumes continue the optimizer."""

import shutil

import pytest

from esvllm.runlog import read_metrics
from tests.helpers import FAKE, final_weights, run, same_weights, without_eval


OPTIONS = {"antithetic": ["--antithetic"], "centered_rank": ["--shaping", "centered_rank"],
           "adam": ["--optimizer", "adam", "--alpha", "0.002"],
           "momentum_cosine": ["--optimizer", "momentum", "--sigma_schedule", "cosine", "--alpha_schedule", "linear",
                               "--weight_decay", "0.01"],
           "correlated": ["--noise", "paper_correlated", "--mini_batch_size", "2"]}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_two_engines_stay_bit_identical_with_each_option(name, tmp_path, ray_session):
    run_dir = run(tmp_path, name, OPTIONS[name], base=FAKE)
    records = read_metrics(run_dir)
    assert len(records) == 3 and all(r["checksum"] for r in records)  # checked after every iteration
    if name == "momentum_cosine":
        assert records[0]["sigma"] == 0.05 and records[-1]["sigma"] == pytest.approx(0.005)


def test_a_resume_continues_the_optimizers_state_bit_for_bit(tmp_path, ray_session):
    adam = ["--optimizer", "adam", "--alpha", "0.002", "--save_every", "1", "--keep_checkpoints", "5"]
    whole = run(tmp_path, "whole", [*adam, "--num_iterations", "5"], base=FAKE)
    first = run(tmp_path, "first", [*adam, "--num_iterations", "3"], base=FAKE)
    assert (first / "checkpoints" / "iter_000003" / "model" / "es_optimizer.state").is_file()
    shutil.rmtree(first / "final")
    shutil.rmtree(first / "checkpoints" / "iter_000003")  # resume from iteration 2 and replay one update
    from esvllm.run import main

    resumed = main(["--resume", str(first), "--num_iterations", "5"])
    assert without_eval(read_metrics(resumed)) == without_eval(read_metrics(whole))
    assert same_weights(final_weights(resumed), final_weights(whole))


def test_mini_batches_reach_the_engines_and_leave_a_run_unchanged(tmp_path, ray_session, monkeypatch):
    # Fake engine 0 dies at its 13th generate call: one call per member (12 members in all) never gets
    # there, one call per prompt does, so a restart shows that --mini_batch_size reached the engines.
    monkeypatch.setenv("ESVLLM_FAKE_DIE_ON_CALL", "0:generate:13")
    whole = run(tmp_path, "whole", [], base=FAKE)
    split = run(tmp_path, "split", ["--mini_batch_size", "1"], base=FAKE)
    assert sum(r["engine_restarts"] for r in read_metrics(whole)) == 0
    assert sum(r["engine_restarts"] for r in read_metrics(split)) == 1
    assert without_eval(read_metrics(whole)) == without_eval(read_metrics(split))
    assert same_weights(final_weights(whole), final_weights(split))
