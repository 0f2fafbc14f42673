"""esvllm.train, the Python door: the command line's checks and messages, data given as rows, rewards
given as callables (named by import path, or registered and pickled to reward workers), the examples."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import esvllm
from esvllm.run import parser
from rewards import REWARDS, resolve_reward, spec_of_callable
from rewards.addition import addition_reward
from rewards.data import task_splits
from tests.unit.test_config import BAD_CONFIGS, fails_with

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv, fragments", BAD_CONFIGS, ids=[" ".join(a) for a, _ in BAD_CONFIGS])
def test_a_bad_setting_raises_the_message_the_command_line_prints(argv, fragments, monkeypatch):
    import engines.pool

    monkeypatch.setattr(engines.pool.EnginePool, "start", lambda *a, **k: pytest.fail("an engine was started"))
    printed = fails_with(argv, *fragments).removeprefix("error: ")
    with pytest.raises((ValueError, FileNotFoundError)) as raised:
        esvllm.train(**vars(parser().parse_args(argv)))
    assert str(raised.value) == printed


def test_an_unknown_option_is_refused_with_the_names_close_to_it():
    with pytest.raises(TypeError, match="no option 'sigmaa'; did you mean sigma"):
        esvllm.train(sigmaa=0.01)


def test_rows_train_and_evaluate_as_the_data_files_they_are_written_to(tmp_path, capsys):
    train, heldout = task_splits("addition", None, 40, 12, 0)
    plan = esvllm.train(model="tiny", task="addition", train_data=train, eval_data={"sums": heldout},
                        dry_run=True, output_dir=str(tmp_path))
    assert plan["fits"] and plan["train_samples"] == 40 and plan["eval_samples"] == {"sums": 12}
    files = sorted((tmp_path / "data").iterdir())
    assert [json.loads(line) for line in files[1].read_text().splitlines()] == train  # train-<digest>.jsonl
    assert [json.loads(line) for line in files[0].read_text().splitlines()] == heldout
    esvllm.train(model="tiny", task="addition", train_data=train, eval_data={"sums": heldout}, dry_run=True,
                 output_dir=str(tmp_path))
    assert sorted((tmp_path / "data").iterdir()) == files  # the same rows, the same files
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["train_samples"] == 40


def test_a_row_that_is_not_a_dict_is_named():
    with pytest.raises(ValueError, match="train data, row 1: a str"):
        esvllm.train(train_data=[{"prompt": "1+1="}, "2+2="], dry_run=True)


def _train_in_a_spawned_child(errors) -> None:
    try:
        esvllm.train(dry_run=True)
    except RuntimeError as exc:
        errors.put(str(exc))
    else:
        errors.put("no error")


def test_a_call_from_a_spawned_worker_says_to_guard_the_script():
    """What a script without `if __name__ == "__main__":` does in each spawned reward worker."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    child = context.Process(target=_train_in_a_spawned_child, args=(errors,))
    child.start()
    child.join(timeout=120)
    assert 'under `if __name__ == "__main__":`' in errors.get(timeout=5)


def make_closure(offset: float):
    return lambda completion, sample: len(completion) + offset


def test_a_module_level_reward_is_named_by_its_import_path_and_a_closure_lives_in_this_process():
    assert spec_of_callable(addition_reward) == "rewards.addition:addition_reward"
    closure = make_closure(0.5)
    spec = spec_of_callable(closure)
    assert spec.startswith("python:") and resolve_reward(spec) is closure
    assert spec not in REWARDS  # the names the errors list (and the reward tests cover) stay the built-in ones
    with pytest.raises(ValueError, match="resume with esvllm.train"):
        resolve_reward("python:a_reward_of_another_process")


def test_a_closure_reward_scores_the_same_in_spawned_reward_workers():
    from esvllm.scoring import Scorer

    spec = spec_of_callable(make_closure(0.25))
    completions, samples = ["a", "bcd", "ef"], [{"prompt": "x"}] * 3
    inline = Scorer(spec).score(completions, samples)
    workers = Scorer(spec, timeout=30)
    try:
        assert workers.score(completions, samples)["reward"] == inline["reward"] == pytest.approx((1 + 3 + 2) / 3 + 0.25)
    finally:
        workers.close()


def test_a_reward_that_cannot_go_to_reward_workers_is_refused_before_start(tmp_path):
    lock = threading.Lock()

    def locked(completion, sample):
        with lock:
            return 0.0

    with pytest.raises(ValueError, match=r"cannot be sent to reward worker processes \(--reward_timeout\)"):
        esvllm.train(reward=locked, reward_timeout=5, engine="fake", output_dir=str(tmp_path))


def test_the_gpu_example_plans_countdown_on_four_gpus_without_starting_anything(tmp_path):
    from esvllm.model_shapes import write_qwen25_shaped

    model = write_qwen25_shaped("3B", tmp_path / "Qwen2.5-3B-Instruct")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "countdown_gpu.py"), "--dry_run", "--model",
                           str(model), "--gpu_memory_gb", "80", "--output_dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    plan = json.loads(done.stdout.strip().splitlines()[-2])
    assert plan["cuda_devices"] == [0, 1, 2, 3] and plan["train_samples"] == 200 and plan["fits"]
    assert done.stdout.strip().endswith("fits")
