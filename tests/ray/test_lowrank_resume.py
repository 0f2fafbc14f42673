"""A low-rank run on fake engines, killed and resumed: bit-identical to the whole run."""

from esvllm.runlog import read_metrics
from tests.helpers import FAKE, final_weights, run, same_weights, without_eval


def test_a_low_rank_run_resumed_after_a_kill_ends_bit_identical(tmp_path, ray_session):
    import shutil

    from esvllm.run import main

    args = ["--perturbation", "lowrank", "--rank", "4", "--save_every", "1", "--keep_checkpoints", "5"]
    whole = run(tmp_path, "whole", [*args, "--num_iterations", "4"], base=FAKE)
    first = run(tmp_path, "first", [*args, "--num_iterations", "2"], base=FAKE)
    shutil.rmtree(first / "final")
    shutil.rmtree(first / "checkpoints" / "iter_000002")  # as if killed before the last checkpoint
    resumed = main(["--resume", str(first), "--num_iterations", "4"])
    assert without_eval(read_metrics(resumed)) == without_eval(read_metrics(whole))
    assert same_weights(final_weights(resumed), final_weights(whole))
