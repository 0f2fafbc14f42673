"""One run reached four ways, bit for bit: `python -m esvllm.run` with the built-in data and the named
reward; esvllm.train with the same data as rows and the reward as a closure; the command line
without the noise cache (every update draws all members' noise again); and one engine in the
driver's own process instead of two Ray actors (--in_process). Fake engines hold the real
ES state and its noise cache (tests/engine/test_engine.py checks the cache on a vLLM engine)."""

import json
import os

import pytest

import esvllm
from esvllm.run import parser
from esvllm.runlog import read_metrics
from rewards.conciseness import conciseness_reward
from rewards.data import task_splits

from tests.helpers import FAKE, final_weights, run, same_weights, without_timing

REFERENCE = [*FAKE, "--eval_every", "3"]  # FAKE keeps its members' noise (--noise_cache_mb 64)


@pytest.fixture(scope="module")
def cli_run(ray_session, tmp_path_factory):
    return run(tmp_path_factory.mktemp("cli"), "ref", base=REFERENCE)


def test_a_python_run_with_rows_and_a_closure_equals_the_command_line_run(cli_run, tmp_path):
    train, heldout = task_splits("conciseness", None, 6, 4, 3)  # what the CLI run drew from the generator
    calls = []

    def reward(completion, sample):  # a closure: registered in this process, not importable
        calls.append(1)
        return conciseness_reward(completion, sample)

    settings = vars(parser().parse_args(FAKE))  # the same flags, as keywords
    python = esvllm.train(reward=reward, train_data=train, eval_data=heldout, eval_every=3,
                          output_dir=str(tmp_path / "python"), **settings)
    assert calls and python.config["reward"].startswith("python:")
    assert python.config["data"].startswith(str(tmp_path / "python" / "data"))
    assert without_timing(python.records) == without_timing(read_metrics(cli_run))
    assert [e["reward"] for e in python.evaluations] == [e["reward"] for e in esvllm.Run.load(cli_run).evaluations]
    assert same_weights(final_weights(python.run_dir), final_weights(cli_run))
    assert python.final_model == python.run_dir / "final"


def test_the_noise_cache_does_not_change_the_result(cli_run, tmp_path):
    drawn_again = run(tmp_path, "c", ["--noise_cache_mb", "0"], base=REFERENCE)
    assert without_timing(read_metrics(drawn_again)) == without_timing(read_metrics(cli_run))
    assert same_weights(final_weights(drawn_again), final_weights(cli_run))


def test_one_engine_in_this_process_gives_the_two_ray_engines_result(cli_run, tmp_path):
    alone = run(tmp_path, "alone", ["--in_process", "--num_engines", "1"], base=REFERENCE)
    assert json.loads((alone / "engines.json").read_text())[0]["pid"] == os.getpid()  # no actor
    assert json.loads((cli_run / "engines.json").read_text())[0]["pid"] != os.getpid()
    assert without_timing(read_metrics(alone)) == without_timing(read_metrics(cli_run))
    assert same_weights(final_weights(alone), final_weights(cli_run))
