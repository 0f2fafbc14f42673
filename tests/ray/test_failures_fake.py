"""Failures around the engines, on fake engines: a hung reward, a run killed and resumed as a user would.
(tests/engine/test_failures.py kills and signals runs on real vLLM engines.)"""

import subprocess
import sys

import psutil
import pytest

from esvllm.run import main
from esvllm.runlog import read_metrics
from tests.engine.test_failures import descendants, wait_for_iterations
from tests.helpers import FAKE, final_weights, same_weights, without_timing


def test_a_hung_reward_is_cut_off_and_scored_with_the_fallback(tmp_path, ray_session, monkeypatch):
    from rewards.data import task_splits

    train, _ = task_splits("conciseness", None, 6, 4, 3)
    monkeypatch.setenv("ESVLLM_TEST_HANG_PROMPT", train[0]["prompt"])
    run_dir = main(FAKE + ["--output_dir", str(tmp_path), "--num_iterations", "1",
                           "--reward", "tests.reward_helpers:hangs_on_one_prompt", "--reward_timeout", "2"])
    [record] = read_metrics(run_dir)
    assert record["reward_timeouts"] == 4  # the hung prompt, once per member, cut off (not an hour each)


@pytest.mark.usefixtures("demo_model")  # --experiment demo: runs last, once it is built (tests/conftest.py)
def test_kill_and_resume_as_a_user_would_ends_bit_identical_to_an_uninterrupted_run(tmp_path, ray_session):
    # The command of the architecture issue: SIGKILL after 3 of 6 iterations, then --resume. The
    # engines restart from checkpoints/iter_000003, which --keep_checkpoints 2 prunes before the end.
    args = ["--experiment", "demo", "--engine", "fake", "--device", "cpu", "--num_engines", "1", "--population_size", "4",
            "--num_iterations", "6", "--global_seed", "7", "--save_every", "1"]
    whole = main(args + ["--output_dir", str(tmp_path / "whole")])
    cmd = [sys.executable, "-m", "esvllm.run", *args, "--output_dir", str(tmp_path / "killed")]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = wait_for_iterations(tmp_path / "killed", 3, process)
    children = descendants(process.pid)
    process.kill()
    process.wait()
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    resumed = main(["--resume", str(run_dir)])
    assert not (resumed / "checkpoints" / "iter_000003").exists()
    assert same_weights(final_weights(resumed), final_weights(whole))
    assert without_timing(read_metrics(resumed)) == without_timing(read_metrics(whole))
