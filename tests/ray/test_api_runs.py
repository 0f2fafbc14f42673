"""esvllm.train runs the command line's code: rows and a callable reward give the run that the
built-in data and the named reward give through `python -m esvllm.run`, bit for bit."""

import esvllm
from esvllm.run import parser
from esvllm.runlog import read_metrics
from rewards.conciseness import conciseness_reward
from rewards.data import task_splits

from tests.helpers import FAKE, final_weights, run, same_weights, without_timing


def test_a_python_run_with_rows_and_a_closure_equals_the_command_line_run(ray_session, tmp_path):
    cli = run(tmp_path, "cli", ["--eval_every", "3"], base=FAKE)
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
    assert without_timing(python.records) == without_timing(read_metrics(cli))
    assert [e["reward"] for e in python.evaluations] == [e["reward"] for e in esvllm.Run.load(cli).evaluations]
    assert same_weights(final_weights(python.run_dir), final_weights(cli))
    assert python.final_model == python.run_dir / "final"
